"""A stand-in for ``xarm.wrapper.XArmAPI`` (the real controller is not reachable here).

It keeps the attributes and return codes the backend relies on, and behaves like the
controller after an error: the arm drops to mode 0 / state 4 and refuses servo targets
(code 1) until the error is cleared and servo mode and the ready state are set again.
"""
from __future__ import annotations


class StandInXArmAPI:
    def __init__(self, ip: str = "192.168.1.222", connected: bool = True):
        self.ip, self.connected = ip, connected
        self.error_code, self.warn_code = 0, 0
        self.mode, self.state = 0, 4
        self.motion_enabled = False
        self.angles = [0.0, -0.247, 0.0, 0.909, 0.0, 1.156, 0.0]
        self.calls: list[str] = []
        self.targets: list[list[float]] = []
        self.sticky_error = False  # an error clean_error cannot clear (the cause persists)

    # --------------------------------------------------------------- test controls
    def raise_error(self, code: int, sticky: bool = False) -> None:
        self.error_code, self.sticky_error = code, sticky
        self.mode, self.state = 0, 4

    # --------------------------------------------------------------- SDK surface
    def get_joint_states(self, is_radian=True, num=3):
        self.calls.append("get_joint_states")
        code = 1 if self.error_code else (2 if self.warn_code else 0)
        return code, [list(self.angles), [0.0] * 7, [0.5] * 7]

    def clean_error(self):
        self.calls.append("clean_error")
        if not self.sticky_error:
            self.error_code = 0
        return 0

    def clean_warn(self):
        self.calls.append("clean_warn")
        self.warn_code = 0
        return 0

    def motion_enable(self, enable=True, servo_id=None):
        self.calls.append("motion_enable")
        self.motion_enabled = bool(enable)
        return 0

    def set_mode(self, mode=0):
        self.calls.append(f"set_mode({mode})")
        if self.error_code:
            return 1
        self.mode = mode
        return 0

    def set_state(self, state=0):
        self.calls.append(f"set_state({state})")
        if self.error_code:
            return 1
        self.state = state
        return 0

    def set_servo_angle_j(self, angles, speed=None, mvacc=None, mvtime=None, is_radian=None, **kwargs):
        self.calls.append("set_servo_angle_j")
        if self.error_code:
            return 1
        if self.mode != 1 or self.state not in (0, 1, 2) or not self.motion_enabled:
            return 9
        self.targets.append(list(angles))
        self.angles = list(angles)
        return 0

    def disconnect(self):
        self.calls.append("disconnect")
        self.connected = False
