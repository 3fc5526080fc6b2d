"""Removing the robot from its own point cloud ("self-filtering").

HOP's policy takes an *object* point cloud. Cropping a box and dropping the table leaves the
arm and hand in it too, and on this robot they are most of the points (the hand sits right
over the objects). With the measured joints, the calibrated camera and the robot's URDF
primitives we know where the robot is: a point within ``margin`` of any primitive (box,
cylinder, sphere, each inflated by ``margin``) is the robot's and is dropped. The same test
runs on the twin and on the real robot; it needs nothing but the joints at the frame's time.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from robot_runtime.description.geometry import RobotPrimitives


class RobotSelfFilter:
    """``inside(points, q, margin)``: which base-frame points [N, 3] lie on the robot posed at
    ``q`` [23] (rad, driver order ``D.ALL_JOINTS``), within ``margin`` m of its surface."""

    def __init__(self, urdf_path=None):
        self.robot = RobotPrimitives(urdf_path)

    def inside(self, points: np.ndarray, q, margin: float) -> np.ndarray:
        pts = np.asarray(points, float)
        hit = np.zeros(len(pts), bool)
        for kind, (T, sizes) in self.robot.posed(q).items():
            local = (pts[None] - T[:, None, :3, 3]) @ T[:, :3, :3]      # [G, N, 3]: R^T (p - t), row-wise
            if kind == "box":
                hit |= np.any(np.all(np.abs(local) <= sizes[:, None, :] / 2 + margin, axis=2), axis=0)
            elif kind == "cylinder":
                radial = np.hypot(local[..., 0], local[..., 1]) <= sizes[:, None, 0] + margin
                axial = np.abs(local[..., 2]) <= sizes[:, None, 1] / 2 + margin
                hit |= np.any(radial & axial, axis=0)
            else:
                hit |= np.any(np.linalg.norm(local, axis=2) <= sizes[:, None, 0] + margin, axis=0)
        return hit


@lru_cache(maxsize=1)
def default_self_filter() -> RobotSelfFilter:
    """The packaged robot's filter (built once per process)."""
    return RobotSelfFilter()
