"""UFactory xArm7 through xarm-python-sdk, in servo mode.

The SDK (``pip install xarm-python-sdk``, the ``xarm`` extra) is imported only when this
backend is chosen. The arm controller drives it:

- :meth:`XArm.enable` is the explicit re-arm sequence: clear errors and warnings, enable
  motion, servo mode (``set_mode(1)``), ready state (``set_state(0)``), then check that
  the controller really reports no error, mode 1 and a ready state. It never runs by itself.
- :meth:`XArm.send_servo_target` streams one ``set_servo_angle_j`` target; the arm runs to
  it at full speed, so the caller's safety shield keeps each step small.
- :meth:`XArm.faults` reads the controller's error and warning codes and names them.
- :meth:`XArm.stop` sets the stop state (4); after it, or after any controller error, the
  arm is out of servo mode until :meth:`XArm.enable` runs again.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from robot_runtime.devices.base import ArmDevice, DeviceFault, JointSample
from robot_runtime.errors import DeviceError, DeviceNotAvailableError

#: Controller error codes (``error_code``), as the xArm manual and the SDK's table number them.
XARM_ERRORS: dict[int, str] = {
    1: "emergency stop button on the control box pressed",
    2: "emergency IO of the control box triggered",
    3: "emergency stop of the three-state switch pressed",
    10: "servo motor error", 11: "servo motor error (joint 1)", 12: "servo motor error (joint 2)",
    13: "servo motor error (joint 3)", 14: "servo motor error (joint 4)", 15: "servo motor error (joint 5)",
    16: "servo motor error (joint 6)", 17: "servo motor error (joint 7)",
    18: "force-torque sensor communication error",
    19: "end effector communication error",
    21: "kinematics error",
    22: "self-collision",
    23: "joint angle over limit",
    24: "speed over limit",
    25: "planning error",
    26: "linux real-time error",
    27: "command reply error",
    28: "end module communication error",
    30: "feedback speed over limit",
    31: "collision or abnormal current",
    32: "three-point circle calculation error",
    33: "controller GPIO error",
    34: "recording timeout",
    35: "safety boundary reached",
    36: "too many delay commands",
    37: "abnormal motion in manual mode",
    38: "abnormal joint angle",
    39: "power board master/slave communication error",
    40: "no error-free joint trajectory found",
    41: "friction file invalid",
    42: "calibration file invalid",
    50: "force-torque sensor read error",
    51: "force-torque sensor mode error",
    52: "force-torque sensor zeroing error",
    53: "force-torque sensor overloaded",
    60: "linear (TCP) speed over limit in servo mode",
    110: "arm base board communication error",
    111: "control box RS-485 device communication error",
}

#: Controller warning codes (``warn_code``).
XARM_WARNINGS: dict[int, str] = {
    11: "controller command buffer full",
    12: "command parameter error",
    13: "command does not exist",
    14: "command has no solution",
    15: "modbus command buffer full",
}

#: Return codes of SDK calls (0 is success).
XARM_API_CODES: dict[int, str] = {
    -1: "not connected", -2: "not ready (motion not enabled or state not set)", -3: "API exception",
    -4: "command does not exist", -6: "Cartesian limit", -7: "joint limit", -8: "out of range",
    -9: "emergency stop", 1: "the controller has an uncleared error", 2: "the controller has an uncleared warning",
    3: "reply timeout", 4: "TCP reply length error", 5: "TCP reply number error", 6: "TCP protocol error",
    7: "TCP reply does not match the command", 8: "send error", 9: "not ready to move", 10: "result invalid",
    11: "other error", 12: "parameter error",
}

SERVO_MODE = 1
READY_STATE = 0
STOP_STATE = 4


def xarm_error_name(code: int) -> str:
    """``'C22 self-collision'`` for 22; unknown codes are named as such."""
    return f"C{code} {XARM_ERRORS.get(code, 'unknown controller error (see the xArm manual)')}"


def xarm_warning_name(code: int) -> str:
    """``'W11 controller command buffer full'`` for 11."""
    return f"W{code} {XARM_WARNINGS.get(code, 'unknown controller warning (see the xArm manual)')}"


def xarm_api_code_name(code: int) -> str:
    return f"code {code} ({XARM_API_CODES.get(code, 'unknown')})"


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
        sdk_factory: builds the SDK object from an IP (the real ``XArmAPI`` by default).
        clock: acquisition clock for stamps (s, ROS time).
    """

    #: How long arming waits for the report stream to show the servo mode and a ready state (s).
    REPORT_WAIT_S = 1.5

    def __init__(self, cfg, sdk_factory: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.time,
                 node=None):
        self.cfg = cfg
        self._factory = sdk_factory or _default_sdk
        self.clock = clock
        self.api = None
        self._lost = False   # a call got no answer: the next enable() connects again

    def connect(self) -> None:
        """Connect, trying again for ``cfg.connect_timeout_s`` (a control box still starting up).

        Raises:
            DeviceError: not reachable in that time (the SDK's own exception is in the message).
        """
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        while True:
            try:
                api = self._factory(self.cfg.ip)
                why = "" if getattr(api, "connected", False) else "not connected"
            except DeviceNotAvailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - the SDK raises a bare Exception when it cannot connect
                api, why = None, f"{type(exc).__name__}: {exc}"
            if not why:
                api.set_timeout(self.cfg.command_timeout_s)
                self.api = api
                return
            if time.monotonic() >= deadline:
                raise DeviceError(f"xArm at {self.cfg.ip} is not reachable after {self.cfg.connect_timeout_s:g} s "
                                  f"({why}; check the cable and the control box)")
            time.sleep(0.2)   # the box may still be starting: try again

    def _require(self):
        if self.api is None:
            raise DeviceError("xArm is not connected")
        return self.api

    def read_state(self) -> JointSample | None:
        """Joint positions (rad), velocities (rad/s) and efforts (N m) [7], stamped at the request."""
        api = self._require()
        t = self.clock()
        code, states = api.get_joint_states(is_radian=True)
        if code not in (0, 1, 2):  # 1/2: the state is valid, the controller has an error/warning
            raise self._failed("get_joint_states", code)
        pos, vel, eff = (np.asarray(s[:7], float) for s in states)
        return JointSample(t, pos, vel, eff)

    def faults(self) -> list[DeviceFault]:
        """The controller's error (stops motion) and warning (reported), each named."""
        api = self._require()
        out = []
        err, warn = int(api.error_code or 0), int(api.warn_code or 0)
        if err:
            out.append(DeviceFault(err, xarm_error_name(err), error=True))
        if warn:
            out.append(DeviceFault(warn, xarm_warning_name(warn), error=False))
        if not getattr(api, "connected", True):
            out.append(DeviceFault(None, f"xArm at {self.cfg.ip} disconnected", error=True))
        return out

    def enable(self) -> None:
        """The re-arm sequence; raises DeviceError naming the step and the fault when refused.

        After a lost connection (a pulled cable, a box restarted) this is the way back: the
        explicit re-arm connects again (trying for ``cfg.connect_timeout_s``) before the sequence.
        """
        api = self.api
        if api is None or self._lost or not getattr(api, "connected", True):
            if api is not None:
                try:
                    api.disconnect()
                except Exception:  # noqa: BLE001 - the SDK raises bare exceptions; the old client is discarded
                    pass
            self.api = None
            self.connect()
            self._lost = False
            api = self.api
        steps = (("clean_error", api.clean_error), ("clean_warn", api.clean_warn),
                 ("motion_enable", lambda: api.motion_enable(True)), ("set_mode(1)", lambda: api.set_mode(SERVO_MODE)),
                 ("set_state(0)", lambda: api.set_state(READY_STATE)))
        for name, call in steps:
            code = call()
            if code not in (0, None):
                raise DeviceError(f"xArm {name} failed with {xarm_api_code_name(code)}; "
                                  f"faults: {self._fault_text()}")
        # The SDK learns the error, the mode and the state from the box's report stream, a few
        # times a second: wait for a report that shows the new ones (read at once, they were the
        # old ones: a cleared error still showing, mode 0).
        def settled() -> bool:
            return not any(f.error for f in self.faults()) and int(api.mode) == SERVO_MODE \
                and int(api.state) in (0, 1, 2)
        deadline = time.monotonic() + self.REPORT_WAIT_S
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.01)   # polling the SDK's reported values: it offers no event for them
        errors = [f for f in self.faults() if f.error]
        if errors:
            raise DeviceError(f"xArm still reports {'; '.join(map(str, errors))} after clearing; "
                              "fix the cause (see the xArm manual) and re-arm")
        if int(api.mode) != SERVO_MODE or int(api.state) not in (0, 1, 2):
            raise DeviceError(f"xArm is in mode {api.mode}, state {api.state} after enabling "
                              f"(expected mode {SERVO_MODE}, a ready state)")

    #: SDK codes that mean no answer came: not connected, or the reply timed out.
    LOST_CODES = (-1, 3)

    def _failed(self, call: str, code: int, refresh: bool = False) -> DeviceError:
        """The error for a refused or unanswered call, naming the code and the faults; a call
        that got no answer (a lost connection or a hung box look alike on a real network: no
        answer) says so and how to come back, and makes the next re-arm connect again."""
        if code in self.LOST_CODES:
            self._lost = True
            return DeviceError(f"xArm at {self.cfg.ip}: {call} got no answer ({xarm_api_code_name(code)}): the "
                               f"connection is lost or the controller stopped answering; check the cable and the "
                               f"control box, then re-arm to reconnect")
        return DeviceError(f"xArm {call} failed with {xarm_api_code_name(code)}; "
                           f"faults: {self._fault_text(refresh=refresh)}")

    def _fault_text(self, refresh: bool = False) -> str:
        """The faults, named. ``refresh`` asks the controller for its codes first: the SDK learns
        them from the report, a few times a second, so right after an answer that carried the
        error bit they are not known yet (the message then said "faults: none reported")."""
        if refresh and self.api is not None:
            try:
                self.api.get_err_warn_code()
            except Exception:   # noqa: BLE001 - the SDK raises bare exceptions; the send's code is reported anyway
                pass
        return "; ".join(map(str, self.faults())) or "none reported"

    def send_servo_target(self, q) -> None:
        """Stream one target [7] (rad).

        Raises:
            DeviceError: the SDK refused the target (the message names the code and faults).
        """
        api = self._require()
        code = api.set_servo_angle_j([float(v) for v in q], is_radian=True)
        if code not in (0, 2):  # 2: an uncleared warning; the target was still taken
            raise self._failed("set_servo_angle_j", code, refresh=True)

    def stop(self) -> None:
        if self.api is not None:
            self.api.set_state(STOP_STATE)

    def disconnect(self) -> None:
        if self.api is not None:
            self.api.disconnect()
            self.api = None
