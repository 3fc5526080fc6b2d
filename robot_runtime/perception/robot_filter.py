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
    ``q`` [23] (rad, driver order ``D.ALL_JOINTS``), within ``margin`` m of its surface.

    Each primitive is first tested against its bounding sphere (inflated by ``margin``), in one
    product for all primitives; only the point-primitive pairs inside one get the exact test
    (most points are on the objects, away from most of the robot). The result is the exact
    test's: the sphere holds the whole inflated primitive.
    """

    def __init__(self, urdf_path=None):
        self.robot = RobotPrimitives(urdf_path)
        kinds = list(self.robot.batches)
        self._kind_of = np.concatenate([np.full(len(self.robot.batches[k][2]), i) for i, k in enumerate(kinds)])
        self._kinds = kinds

    @staticmethod
    def _reach(kind: str, sizes: np.ndarray, margin: float) -> np.ndarray:
        """Radius (m) of a sphere around each primitive's centre holding it inflated by ``margin``."""
        if kind == "box":
            return np.linalg.norm(sizes / 2 + margin, axis=1)
        if kind == "cylinder":
            return np.hypot(sizes[:, 0] + margin, sizes[:, 1] / 2 + margin)
        return sizes[:, 0] + margin

    def inside(self, points: np.ndarray, q, margin: float) -> np.ndarray:
        pts = np.asarray(points, float)
        hit = np.zeros(len(pts), bool)
        if len(pts) == 0:
            return hit
        posed = self.robot.posed(q)
        centres = np.concatenate([posed[k][0][:, :3, 3] for k in self._kinds])                      # [G, 3]
        reach = np.concatenate([self._reach(k, posed[k][1], margin) for k in self._kinds]) + 1e-6   # rounding slack
        d2 = (np.einsum("ni,ni->n", pts, pts)[:, None] - 2.0 * (pts @ centres.T)
              + np.einsum("gi,gi->g", centres, centres)[None, :])                                 # [N, G]
        near_n, near_g = np.nonzero(d2 <= reach[None, :] ** 2)
        start = 0
        for i, kind in enumerate(self._kinds):
            T, sizes = posed[kind]
            sel = self._kind_of[near_g] == i
            n, g = near_n[sel], near_g[sel] - start
            start += len(T)
            if n.size == 0:
                continue
            local = np.einsum("ki,kij->kj", pts[n] - T[g, :3, 3], T[g, :3, :3])    # R^T (p - t), row-wise
            s = sizes[g]
            if kind == "box":
                ok = np.all(np.abs(local) <= s / 2 + margin, axis=1)
            elif kind == "cylinder":
                ok = (np.hypot(local[:, 0], local[:, 1]) <= s[:, 0] + margin) & (np.abs(local[:, 2]) <= s[:, 1] / 2 + margin)
            else:
                ok = np.linalg.norm(local, axis=1) <= s[:, 0] + margin
            hit[n[ok]] = True
        return hit


@lru_cache(maxsize=1)
def default_self_filter() -> RobotSelfFilter:
    """The packaged robot's filter (built once per process)."""
    return RobotSelfFilter()
