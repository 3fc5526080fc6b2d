"""A scripted reach-and-grasp cycle for the twin (what ``make sim`` shows before a policy exists).

Pure: give it the time, the measured joints and the target object's position; it
returns the arm servo target and the hand posture. Waypoints are solved by IK on the
URDF and joined by minimum-jerk interpolation in joint space.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_runtime import description as D
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import make_T, rpy_to_mat

#: Hand postures (rad, driver order): open, and a power grasp with the thumb opposed.
HAND_CLOSED = np.array([0.0, 0.9, 0.7, 0.5] * 3 + [1.3, 0.5, 0.6, 0.6])
#: Grasp point in the palm frame (m): between the fingers and the thumb, part-way down the fingers.
GRASP_POINT_PALM = np.array([0.045, 0.0, 0.085])
#: Fractions of the cycle at which each waypoint is reached.
PHASES = {"start": 0.0, "above": 0.22, "down": 0.36, "closed": 0.46, "lifted": 0.64, "released": 0.72, "home": 1.0}
#: The open fingertips stay this far above the table at the grasp pose (m).
TIP_CLEARANCE = 0.015


def min_jerk(s: float) -> float:
    """Minimum-jerk time scaling on [0, 1]."""
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s * s)


@dataclass
class Waypoint:
    t: float
    arm: np.ndarray
    hand: np.ndarray


class ReachGraspScript:
    """One reach-grasp-lift-release cycle of ``cycle_s`` seconds toward an object.

    Args:
        model: URDF model (23 joints).
        arm_home, hand_open: start/end posture (rad).
        mount_xyz, mount_rpy: hand mount on the flange (m, rad).
    """

    def __init__(self, model: UrdfModel, arm_home, hand_open, mount_xyz, mount_rpy, cycle_s: float,
                 table_z: float = 0.0):
        self.model = model
        self.table_z = table_z
        self.arm_home = np.asarray(arm_home, float)
        self.hand_open = np.asarray(hand_open, float)
        self.cycle_s = cycle_s
        self.T_mount = make_T(rpy_to_mat(mount_rpy), mount_xyz)
        q = np.concatenate([self.arm_home, self.hand_open])
        self.R_down = model.link_pose(q, D.FLANGE_FRAME)[:3, :3]
        self.waypoints: list[Waypoint] = []

    def _flange_for(self, point: np.ndarray) -> np.ndarray:
        """Flange pose (hand pointing down) that puts the palm's grasp point at ``point``."""
        offset = self.T_mount[:3, :3] @ GRASP_POINT_PALM + self.T_mount[:3, 3]
        return make_T(self.R_down, point - self.R_down @ offset)

    def plan(self, arm_now, object_position) -> list[Waypoint]:
        """Plan a cycle from ``arm_now`` [7] toward an object at ``object_position`` [3] (m)."""
        obj = np.asarray(object_position, float)
        arm_idx = np.arange(7)
        q = np.concatenate([self.arm_home, self.hand_open])
        arms = {}
        for name, lift in (("above", 0.15), ("down", 0.0), ("lifted", 0.2)):
            q, _, _ = solve_ik(self.model, q, D.FLANGE_FRAME, self._flange_for(obj + [0, 0, lift]), arm_idx)
            if name == "down":  # open fingers point down: keep their tips off the table
                poses = self.model.forward(q)
                low = min(poses[f][2, 3] for f in D.FINGERTIP_FRAMES)
                deficit = self.table_z + TIP_CLEARANCE - low
                if deficit > 0:
                    q, _, _ = solve_ik(self.model, q, D.FLANGE_FRAME, self._flange_for(obj + [0, 0, deficit]),
                                       arm_idx)
            arms[name] = q[:7].copy()
        c, o = HAND_CLOSED, self.hand_open
        plan = [("start", np.asarray(arm_now, float), o), ("above", arms["above"], o), ("down", arms["down"], o),
                ("closed", arms["down"], c), ("lifted", arms["lifted"], c), ("released", arms["lifted"], o),
                ("home", self.arm_home, o)]
        self.waypoints = [Waypoint(PHASES[n] * self.cycle_s, a, h) for n, a, h in plan]
        return self.waypoints

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Arm target [7] and hand posture [16] at time ``t`` (s) into the cycle."""
        wps = self.waypoints
        if not wps:
            return self.arm_home.copy(), self.hand_open.copy()
        if t >= wps[-1].t:
            return wps[-1].arm.copy(), wps[-1].hand.copy()
        for a, b in zip(wps[:-1], wps[1:]):
            if a.t <= t < b.t:
                s = min_jerk((t - a.t) / (b.t - a.t))
                return a.arm + s * (b.arm - a.arm), a.hand + s * (b.hand - a.hand)
        return wps[0].arm.copy(), wps[0].hand.copy()
