"""The hand's view of the scene: where the cloud's points nearest the palm lie in the palm's frame.

A policy that sees the objects in the base frame and its joints must work out, inside the
network, where the object is relative to its hand: the forward kinematics of seven joints,
learned from 15 demos. On the twin's grasp & pour that was where it failed (README ladder rung
33): the hand stopped short of bottles far to the left and pushed past those on the right, and
the last centimetres were the demos' relative motion replayed rather than a reach to the bottle
in view. The hand's view gives the network that relation directly, computed by the robot's own
kinematics from the joints measured when the frame was taken.

For each count k of the architecture's ``hand_view``, one row: the mean of the k points of the
frame's cloud nearest the palm's origin, in the palm's frame, in units of :data:`SCALE` (m),
clipped to +-:data:`CLIP`. The rows follow the cloud's points in the network's visual input
([P + R, 3]); the encoder passes them through to the trunk, which embeds them
(:class:`policies.hop.HopPolicy`). Training and the runtime build them with this one function
(:func:`network_visual`), from the frame's points and the joints of its step.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from policies.errors import PolicyError
from robot_runtime import description as D

#: Palm-frame coordinates are given in units of this length (m).
SCALE = 0.1
#: ... and clipped to +- this many units (a hand far from everything sees it at 0.5 m).
CLIP = 5.0
#: The link whose frame the view is taken in.
PALM_LINK = "palm"


@lru_cache(maxsize=1)
def _robot():
    from robot_runtime.kinematics import UrdfModel  # noqa: PLC0415

    return UrdfModel.from_file(D.description_path(D.URDF_NAME))


def palm_poses(q: np.ndarray) -> np.ndarray:
    """Joints [N, 23] (rad, driver order) -> the palm's poses [N, 4, 4] (base frame, m)."""
    robot = _robot()
    return np.stack([robot.link_pose(row, PALM_LINK) for row in np.asarray(q, float)])


def hand_rows(points: np.ndarray, q: np.ndarray, counts) -> np.ndarray:
    """The hand's view rows [N, R, 3] of clouds ``points`` [N, P, 3] (base frame, m) taken with the
    joints ``q`` [N, 23] (rad, driver order); row r is the mean of the ``counts[r]`` points nearest
    the palm, palm frame, in :data:`SCALE` units, clipped to +-:data:`CLIP`.

    Raises:
        PolicyError: the shapes do not fit, or a count exceeds the points.
    """
    pts = np.asarray(points, float)
    q = np.asarray(q, float)
    counts = tuple(int(k) for k in counts)
    if pts.ndim != 3 or pts.shape[-1] != 3 or q.shape != (len(pts), len(D.ALL_JOINTS)):
        raise PolicyError(f"the hand's view needs points [N, P, 3] and joints [N, {len(D.ALL_JOINTS)}], got "
                          f"{pts.shape} and {q.shape}")
    if counts and (min(counts) < 1 or max(counts) > pts.shape[1]):
        raise PolicyError(f"hand's view counts {list(counts)}: each must be 1 to the cloud's {pts.shape[1]} points")
    T = palm_poses(q)
    local = np.einsum("nji,npj->npi", T[:, :3, :3], pts - T[:, None, :3, 3])   # R^T (p - o), [N, P, 3]
    order = np.argsort(np.einsum("npi,npi->np", local, local), axis=1)
    local = np.take_along_axis(local, order[..., None], axis=1)
    rows = np.stack([local[:, :k].mean(axis=1) for k in counts], axis=1) if counts else np.zeros((len(pts), 0, 3))
    return np.clip(rows / SCALE, -CLIP, CLIP)


def network_visual(points: np.ndarray, q: np.ndarray, counts) -> np.ndarray:
    """The network's visual input for clouds [N, P, 3] (or one [P, 3]) taken with joints [N, 23]
    (or [23]): the points as they are with no ``counts``, else followed by their
    :func:`hand_rows`, [N, P + R, 3] float32."""
    counts = tuple(counts)
    if not counts:
        return points
    one = np.ndim(points) == 2
    pts = np.asarray(points, np.float32)[None] if one else np.asarray(points, np.float32)
    q = np.asarray(q, float).reshape(len(pts), -1)
    out = np.concatenate([pts, hand_rows(pts, q, counts).astype(np.float32)], axis=1)
    return out[0] if one else out
