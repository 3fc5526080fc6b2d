"""UFactory xArm7 through xarm-python-sdk, in servo mode.

The SDK (``pip install xarm-python-sdk``, the ``xarm`` extra) is imported only when this
backend is chosen. Here the backend connects, reads joint state and names fault codes;
streaming servo targets goes through the arm controller's safety shield.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from robot_runtime.devices.base import ArmDevice, JointSample
from robot_runtime.errors import DeviceError, DeviceNotAvailableError

#: Controller error codes (xArm user manual; the SDK reports them as ``error_code``).
XARM_ERRORS: dict[int, str] = {
    1: "emergency stop button pressed",
    2: "emergency IO of the control box triggered",
    3: "emergency stop of the three-state switch",
    11: "servo motor error (joint 1)", 12: "servo motor error (joint 2)", 13: "servo motor error (joint 3)",
    14: "servo motor error (joint 4)", 15: "servo motor error (joint 5)", 16: "servo motor error (joint 6)",
    17: "servo motor error (joint 7)",
    19: "end module communication error",
    21: "kinematics error",
    22: "self-collision",
    23: "joint angle over limit",
    24: "speed over limit",
    25: "planning error",
    26: "linux real-time error",
    27: "command reply error",
    28: "end module communication error",
    31: "collision or abnormal current",
    35: "safety boundary reached",
    60: "linear (TCP) speed over limit",
}


def xarm_error_name(code: int) -> str:
    """``'C22 self-collision'`` for 22; unknown codes are named as such."""
    return f"C{code} {XARM_ERRORS.get(code, 'unknown controller error (see the xArm manual)')}"


def _default_sdk(ip: str):
    try:
        from xarm.wrapper import XArmAPI  # noqa: PLC0415 - vendor SDK, imported only when chosen
    except ImportError as exc:
        raise DeviceNotAvailableError("arm backend 'xarm' needs xarm-python-sdk: pip install -e '.[xarm]'") from exc
    return XArmAPI(ip, is_radian=True)


class XArm(ArmDevice):
    """xArm7 over Ethernet.

    Args:
        cfg: :class:`~robot_runtime.config.XArmConfig`.
        sdk_factory: builds the SDK object from an IP (the real ``XArmAPI`` by default;
            tests pass a stand-in with the same methods).
        clock: acquisition clock for stamps (s).
    """

    def __init__(self, cfg, sdk_factory: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.time,
                 node=None):
        self.cfg = cfg
        self._factory = sdk_factory or _default_sdk
        self.clock = clock
        self.api = None

    def connect(self) -> None:
        api = self._factory(self.cfg.ip)
        if not getattr(api, "connected", False):
            raise DeviceError(f"xArm at {self.cfg.ip} is not reachable (check the cable and the control box)")
        self.api = api

    def _require(self):
        if self.api is None:
            raise DeviceError("xArm is not connected")
        return self.api

    def read_state(self) -> JointSample | None:
        api = self._require()
        t = self.clock()
        code, states = api.get_joint_states(is_radian=True)
        if code != 0:
            raise DeviceError(f"xArm get_joint_states returned code {code}; faults: {self.faults() or 'none'}")
        pos, vel, eff = (np.asarray(s[:7], float) for s in states)
        return JointSample(t, pos, vel, eff)

    def faults(self) -> list[str]:
        api = self._require()
        out = []
        if api.error_code:
            out.append(xarm_error_name(int(api.error_code)))
        if api.warn_code:
            out.append(f"warning {api.warn_code}")
        return out

    def enable_servo(self) -> None:
        """Explicit operator action: clear errors, enable motion, servo mode (1), ready state (0)."""
        api = self._require()
        for name, call in (("clean_error", lambda: api.clean_error()), ("motion_enable", lambda: api.motion_enable(True)),
                           ("set_mode", lambda: api.set_mode(1)), ("set_state", lambda: api.set_state(0))):
            code = call()
            if code not in (0, None):
                raise DeviceError(f"xArm {name} failed with code {code}; faults: {self.faults() or 'none'}")

    def send_servo_target(self, q) -> None:
        api = self._require()
        code = api.set_servo_angle_j([float(v) for v in q], is_radian=True)
        if code != 0:
            raise DeviceError(f"xArm set_servo_angle_j returned code {code}; faults: {self.faults() or 'none'}")

    def stop(self) -> None:
        if self.api is not None:
            self.api.set_state(4)

    def disconnect(self) -> None:
        if self.api is not None:
            self.api.disconnect()
            self.api = None
