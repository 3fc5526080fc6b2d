"""Removing the robot from its own point cloud ("self-filtering").

HOP's policy takes an *object* point cloud. Cropping a box and dropping the table leaves the
arm and hand in it too, and on this robot they are most of the points (the hand sits right
over the objects). With the measured joints, the calibrated camera and the robot's URDF
primitives we know where the robot is: a point within ``margin`` of any primitive (box,
cylinder, sphere, each inflated by ``margin``) is the robot's and is dropped. The same test
runs on the twin and on the real robot; it needs nothing but the joints at the frame's time.

The test runs once per frame on the policy's critical path (about 750 cropped points, 690 of
them the robot's, against 37 primitives), so its loop is compiled with numba: one pass over the
points, each tested against the primitives' bounding spheres and, inside one, exactly, and done
at its first hit. As numpy array operations (a distance matrix, then the exact test of every
pair inside a sphere) it took 0.5 ms of the 0.8 ms preprocessing step.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

from robot_runtime.description.geometry import RobotPrimitives

#: primitive kinds as the compiled test knows them
_KIND_CODE = {"box": 0, "cylinder": 1, "sphere": 2}


@njit(cache=True, nogil=True)
def _inside_kernel(pts, kinds, rot, centre, half, reach2):  # pragma: no cover - compiled
    """pts [N, 3]; per primitive g: kinds[g] (0 box, 1 cylinder, 2 sphere), rot [G, 3, 3] and centre
    [G, 3] its pose, half [G, 3] its inflated half-extents (box: x, y, z; cylinder: radius, -,
    half length; sphere: radius), reach2 [G] its bounding sphere's squared radius -> hit [N] bool."""
    n, g_count = pts.shape[0], kinds.shape[0]
    hit = np.zeros(n, np.bool_)
    for k in range(n):
        px, py, pz = pts[k, 0], pts[k, 1], pts[k, 2]
        for g in range(g_count):
            dx, dy, dz = px - centre[g, 0], py - centre[g, 1], pz - centre[g, 2]
            if dx * dx + dy * dy + dz * dz > reach2[g]:
                continue
            r = rot[g]
            lx = dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]       # R^T (p - t)
            ly = dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]
            lz = dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]
            kind = kinds[g]
            if kind == 0:
                inside = abs(lx) <= half[g, 0] and abs(ly) <= half[g, 1] and abs(lz) <= half[g, 2]
            elif kind == 1:
                inside = math.hypot(lx, ly) <= half[g, 0] and abs(lz) <= half[g, 2]
            else:
                inside = math.sqrt(lx * lx + ly * ly + lz * lz) <= half[g, 0]
            if inside:
                hit[k] = True
                break
    return hit


class RobotSelfFilter:
    """``inside(points, q, margin)``: which base-frame points [N, 3] lie on the robot posed at
    ``q`` [23] (rad, driver order ``D.ALL_JOINTS``), within ``margin`` m of its surface.

    Each point is tested against each primitive's bounding sphere (inflated by ``margin``) first;
    only inside one does it get the exact test, which decides (the sphere holds the whole
    inflated primitive, so the answer is the exact test's against every primitive).
    """

    def __init__(self, urdf_path=None):
        self.robot = RobotPrimitives(urdf_path)
        b = self.robot.batches
        kinds = list(b)
        self._codes = np.concatenate([np.full(len(b[k][2]), _KIND_CODE[k], np.int64) for k in kinds])
        self._sizes = [(k, b[k][2]) for k in kinds]
        self._bounds: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.inside(np.zeros((1, 3)), np.zeros(23), 0.0)      # compile (or load the compiled test) now

    @staticmethod
    def _reach(kind: str, sizes: np.ndarray, margin: float) -> np.ndarray:
        """Radius (m) of a sphere around each primitive's centre holding it inflated by ``margin``."""
        if kind == "box":
            return np.linalg.norm(sizes / 2 + margin, axis=1)
        if kind == "cylinder":
            return np.hypot(sizes[:, 0] + margin, sizes[:, 1] / 2 + margin)
        return sizes[:, 0] + margin

    @staticmethod
    def _half(kind: str, sizes: np.ndarray, margin: float) -> np.ndarray:
        """[G, 3] the inflated half-extents the exact test compares with (see :func:`_inside_kernel`)."""
        out = np.zeros((len(sizes), 3))
        if kind == "box":
            out[:] = sizes / 2 + margin
        elif kind == "cylinder":
            out[:, 0], out[:, 2] = sizes[:, 0] + margin, sizes[:, 1] / 2 + margin
        else:
            out[:, 0] = sizes[:, 0] + margin
        return out

    def inside(self, points: np.ndarray, q, margin: float) -> np.ndarray:
        pts = np.ascontiguousarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be [N, 3], got shape {pts.shape}")
        margin = float(margin)
        if margin not in self._bounds:
            reach = np.concatenate([self._reach(k, s, margin) for k, s in self._sizes]) + 1e-6   # rounding slack
            self._bounds = {margin: (np.concatenate([self._half(k, s, margin) for k, s in self._sizes]), reach * reach)}
        half, reach2 = self._bounds[margin]
        T = self.robot.poses(q)                                  # each primitive's pose [G, 4, 4], base frame
        return _inside_kernel(pts, self._codes, np.ascontiguousarray(T[:, :3, :3]), np.ascontiguousarray(T[:, :3, 3]),
                              half, reach2)


@lru_cache(maxsize=1)
def default_self_filter() -> RobotSelfFilter:
    """The packaged robot's filter (built once per process)."""
    return RobotSelfFilter()
