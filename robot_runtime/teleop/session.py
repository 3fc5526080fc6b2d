"""A teleoperation session: input samples -> 23 joint targets, with explicit engage/disengage.

Pure (no ROS): the teleop node feeds it samples, the measured joints and the time.

- Before engage, and while disengaged, the session *holds*: it returns the last target
  (at start, the measured joints), so the controllers see a steady, fresh target and the
  robot stays still. Disengage is a clutch: the operator moves freely, then re-engages.
- Engage takes the measured joints and the operator's wrist pose at that moment as the
  reference (see :class:`~robot_runtime.teleop.arm_follow.WristFollower`); it never moves
  the robot by itself.
- Every target is clipped to the joint limits and moves at most ``max_joint_speed * dt``
  from the previous one, so a hand posture far from the robot's, a lost and re-found
  hand, or a scripted plan starting elsewhere is approached at a bounded speed, never
  jumped to.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_runtime.teleop.arm_follow import WristFollower
from robot_runtime.teleop.hand_pose import hand_frame, in_hand_frame

#: The largest time step (s) the speed limit grants after a pause in the input.
MAX_STEP_S = 0.1


@dataclass(frozen=True)
class TeleopSample:
    """One reading of a teleop input, acquired at ``t`` (s, wall clock).

    Exactly what the input provides is set:

    - ``keypoints`` [21, 3] (m, input frame): a tracked human hand; the wrist pose and the
      fingers both come from it;
    - ``wrist`` (4x4, input frame) and ``grasp`` (0 open .. 1 closed): a 6-DoF device;
    - ``joints`` [23] (rad): absolute targets (the scripted expert).
    """

    t: float
    keypoints: np.ndarray | None = None
    wrist: np.ndarray | None = None
    grasp: float | None = None
    joints: np.ndarray | None = None
    left: bool = False


class TeleopSession:
    """Engage/disengage and the sample -> target mapping.

    Args:
        follower: the arm's wrist follower.
        limits: joint limits [23, 2] (rad).
        max_joint_speed: per-joint speed limit [23] (rad/s).
        hand_open, hand_closed: hand postures [16] for the grasp synergy (rad).
        retargeter: callable keypoints-in-hand-frame [21, 3] -> [16] (None: no finger tracking).
    """

    def __init__(self, follower: WristFollower, limits, max_joint_speed, hand_open, hand_closed, retargeter=None):
        self.follower = follower
        self.limits = np.asarray(limits, dtype=float)
        self.max_speed = np.asarray(max_joint_speed, dtype=float)
        self.hand_open = np.asarray(hand_open, dtype=float)
        self.hand_closed = np.asarray(hand_closed, dtype=float)
        self.retargeter = retargeter
        self.engaged = False
        self._need_reference = False
        self._out: np.ndarray | None = None
        self._t: float | None = None
        self.samples = 0

    def engage(self) -> str:
        """Start following the input from the next sample (the robot does not move by this)."""
        if self.engaged:
            return "already engaged"
        self.engaged = True
        self._need_reference = True
        return "engaged: following the input from the next sample"

    def disengage(self) -> str:
        """Stop following; hold the last target."""
        if not self.engaged:
            return "already disengaged"
        self.engaged = False
        self.follower.disengage()
        return "disengaged: holding"

    @property
    def holding(self) -> np.ndarray | None:
        """The target held now (None before the first measured joints)."""
        return None if self._out is None else self._out.copy()

    def step(self, sample: TeleopSample | None, q_measured, t: float) -> np.ndarray | None:
        """Targets [23] (rad) for time ``t`` (s), or None before any measured joints.

        ``sample`` is the newest unused input reading (None: nothing new: hold).
        """
        if self._out is None:
            if q_measured is None:
                return None
            self._out = np.clip(np.asarray(q_measured, dtype=float), self.limits[:, 0], self.limits[:, 1])
            self._t = t
        dt = min(max(t - self._t, 0.0), MAX_STEP_S)
        self._t = t
        if not self.engaged or sample is None:
            return self._out.copy()
        raw = self._raw_target(sample, q_measured, t)
        if raw is None:
            return self._out.copy()
        self.samples += 1
        raw = np.clip(raw, self.limits[:, 0], self.limits[:, 1])
        step = np.clip(raw - self._out, -self.max_speed * dt, self.max_speed * dt)
        self._out = self._out + step
        return self._out.copy()

    def _raw_target(self, s: TeleopSample, q_measured, t: float) -> np.ndarray | None:
        if s.joints is not None:
            self._need_reference = False
            return np.asarray(s.joints, dtype=float)
        wrist, kp_hand = s.wrist, None
        if s.keypoints is not None:
            wrist = hand_frame(s.keypoints, left=s.left)
            kp_hand = in_hand_frame(s.keypoints, wrist)
        if self._need_reference:
            if wrist is None or q_measured is None:
                return None
            # Reference from the robot's current target (what it holds), not a lagging measurement.
            self.follower.engage(self._out, wrist, t)
            if self.retargeter is not None and hasattr(self.retargeter, "warm_start"):
                self.retargeter.warm_start(self._out[7:])
            self._need_reference = False
        raw = self._out.copy()
        if wrist is not None:
            raw[:7] = self.follower.update(wrist, t)
        if kp_hand is not None and self.retargeter is not None:
            raw[7:] = self.retargeter(kp_hand)
        elif s.grasp is not None:
            g = float(np.clip(s.grasp, 0.0, 1.0))
            raw[7:] = self.hand_open + g * (self.hand_closed - self.hand_open)
        return raw

    def status(self) -> dict:
        pos_err, rot_err = self.follower.last_error
        return {"engaged": self.engaged, "waiting_for_reference": self.engaged and self._need_reference,
                "samples": self.samples, "ik_position_error_m": round(pos_err, 5),
                "ik_rotation_error_rad": round(rot_err, 5)}
