"""The arm follows the operator's wrist: relative to engage, low-pass filtered, speed-limited, IK.

Pure: give it poses and times, it returns arm joint targets. The operator's wrist pose
comes in the input's own frame (a webcam's optical frame, a keypoint file's frame, a
SpaceMouse's integrated pose); ``R_base_input`` turns motions in that frame into motions
in the robot's base frame.

At :meth:`WristFollower.engage` the flange's pose and the wrist's pose are taken as the
reference; afterwards the flange moves by the wrist's displacement since engage (times
``scale``) and turns by the wrist's rotation since engage, about the flange. So engaging
never moves the robot, and re-engaging (a clutch) continues from where the robot is.
"""
from __future__ import annotations

import math

import numpy as np

from robot_runtime import description as D
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import rot_exp, rot_log


def low_pass_alpha(cutoff_hz: float, dt: float) -> float:
    """Blend factor of a first-order low-pass with cutoff ``cutoff_hz`` sampled every ``dt`` s (1 = no filter)."""
    if cutoff_hz <= 0 or dt <= 0:
        return 1.0
    rc = 1.0 / (2 * math.pi * cutoff_hz)
    return dt / (rc + dt)


class WristFollower:
    """Operator wrist pose (4x4, input frame) -> arm joint targets [7] (rad).

    Args:
        model: the robot URDF model (23 joints).
        R_base_input: rotation [3, 3] from the input frame to the robot base frame.
        scale: robot displacement per operator displacement.
        cutoff_hz: low-pass cutoff on the commanded flange pose.
        max_speed: flange translation speed limit (m/s).
        max_angular_speed: flange rotation speed limit (rad/s).
        ik_iters: damped-least-squares iterations per update (warm-started).
    """

    def __init__(self, model: UrdfModel, R_base_input=np.eye(3), scale: float = 1.0, cutoff_hz: float = 5.0,
                 max_speed: float = 0.3, max_angular_speed: float = 1.5, ik_iters: int = 15):
        self.model = model
        self.R = np.asarray(R_base_input, dtype=float)
        self.scale = scale
        self.cutoff_hz = cutoff_hz
        self.max_speed = max_speed
        self.max_angular_speed = max_angular_speed
        self.ik_iters = ik_iters
        self._arm = np.arange(len(D.ARM_JOINTS))
        self._q: np.ndarray | None = None       # full 23-joint vector of the last IK solution
        self._ref_input: np.ndarray | None = None
        self._ref_flange: np.ndarray | None = None
        self._cmd: np.ndarray | None = None     # filtered, speed-limited flange pose (4x4)
        self._t: float | None = None
        self.last_error = (0.0, 0.0)            # IK residual of the last update: (m, rad)

    @property
    def engaged(self) -> bool:
        return self._ref_input is not None

    def engage(self, q_robot, T_input, t: float) -> None:
        """Take the measured joints ``q_robot`` [23] and the wrist pose now as the reference."""
        self._q = np.array(q_robot, dtype=float)
        self._ref_flange = self.model.link_pose(self._q, D.FLANGE_FRAME)
        self._ref_input = np.array(T_input, dtype=float)
        self._cmd = self._ref_flange.copy()
        self._t = t

    def disengage(self) -> None:
        self._ref_input = None

    def goal(self, T_input) -> np.ndarray:
        """Flange pose (4x4, base frame) the wrist pose asks for, before filtering."""
        T_input = np.asarray(T_input, dtype=float)
        d = self.R @ (T_input[:3, 3] - self._ref_input[:3, 3]) * self.scale
        turn = self.R @ (T_input[:3, :3] @ self._ref_input[:3, :3].T) @ self.R.T
        T = np.eye(4)
        T[:3, :3] = turn @ self._ref_flange[:3, :3]
        T[:3, 3] = self._ref_flange[:3, 3] + d
        return T

    def update(self, T_input, t: float) -> np.ndarray:
        """Arm joint targets [7] for the wrist pose ``T_input`` seen at time ``t`` (s)."""
        if not self.engaged:
            raise RuntimeError("WristFollower.update before engage")
        dt = max(t - self._t, 0.0)
        self._t = t
        goal = self.goal(T_input)
        a = low_pass_alpha(self.cutoff_hz, dt)
        dp = a * (goal[:3, 3] - self._cmd[:3, 3])
        dr = a * rot_log(goal[:3, :3] @ self._cmd[:3, :3].T)
        n = np.linalg.norm(dp)
        if n > self.max_speed * dt:
            dp *= self.max_speed * dt / n
        n = np.linalg.norm(dr)
        if n > self.max_angular_speed * dt:
            dr *= self.max_angular_speed * dt / n
        self._cmd[:3, 3] += dp
        self._cmd[:3, :3] = rot_exp(dr) @ self._cmd[:3, :3]
        self._q, pos_err, rot_err = solve_ik(self.model, self._q, D.FLANGE_FRAME, self._cmd, self._arm,
                                             iters=self.ik_iters)
        self.last_error = (pos_err, rot_err)
        return self._q[self._arm].copy()
