"""Approach copies of a demo with the other objects moved: which object to take, taught.

A demo of a task with two objects (take the cube, drop it in the bowl) shows the approach to
the object with the other one in one place. Fifteen such demos leave a policy free to place its
reach by both objects, and on a new placement it reaches between them (the twin's grasp & drop:
8 of 12 failed rollouts ended 8-15 cm from the cube, toward the bowl). Until the hand closes, what
the demonstrator does depends on the object taken, not on where the others stand, so the same
approach with the others elsewhere is a demo too. :func:`approach_with_others_moved` makes such
copies from the point clouds alone:

1. the grasp step: where the hand's targets have closed half of the way they close in the demo;
2. the object taken: the cluster of the first frames' clouds (pooled) nearest the fingertips at
   that step (forward kinematics of the measured joints);
3. the others: every point farther from that object's centre (horizontally) than its own radius
   plus a margin; moved, in every frame up to the grasp step, so that their centre lands on a
   spot drawn in the rectangle spanned by where the demos' others stood (and their mirror
   images'), clear of the object taken and inside the crop box.

The copy's windows end at the grasp step (:attr:`policies.bc.Episode.train_until`); its targets
are the demo's own.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from policies.bc import Episode, point_clouds
from policies.errors import PolicyError
from robot_runtime.description import FINGERTIP_FRAMES


def grasp_step(ep: Episode, hand_cols, fraction: float = 0.5, min_close: float = 0.5) -> int:
    """The first step at which the hand's targets (columns ``hand_cols``) have moved ``fraction``
    of their largest total move from the first step (sum over the hand joints, rad).

    Raises:
        PolicyError: the hand's targets move less than ``min_close`` rad in all: it never closes.
    """
    a = np.asarray(ep.actions, float)[:, list(hand_cols)]
    closed = np.abs(a - a[0]).sum(axis=1)
    if closed.max() < min_close:
        raise PolicyError(f"the hand's targets move {closed.max():.2f} rad at most: the demo never closes the hand")
    return int(np.argmax(closed >= fraction * closed.max()))


def clusters(points: np.ndarray, link: float = 0.025) -> np.ndarray:
    """Labels [P] of ``points`` [P, 3] (m): single-linkage clusters, points closer than ``link`` joined."""
    pairs = cKDTree(points).query_pairs(link, output_type="ndarray").reshape(-1, 2)
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def split_taken(cloud: np.ndarray, hand_at: np.ndarray, margin: float = 0.02, min_share: float = 0.03
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """The object taken in a cloud [P, 3] (m, base frame): (its centre [2] (m, x-y), its radius (m,
    horizontally, plus ``margin``), the mask [P] of the other points), the object being the cluster
    (of at least ``min_share`` of the points) whose centre is nearest ``hand_at`` [3] (m)
    horizontally. Dense clouds cluster reliably: pass the points of several frames of a still scene."""
    labels = clusters(cloud)
    sizes = np.bincount(labels)
    objects = np.flatnonzero(sizes >= min_share * len(cloud))   # stray pixels at depth edges are not objects
    centres = np.array([cloud[labels == k, :2].mean(axis=0) for k in objects])
    taken = objects[int(np.argmin(np.linalg.norm(centres - hand_at[:2], axis=1)))]
    own = cloud[labels == taken, :2]
    centre = own.mean(axis=0)
    radius = float(np.linalg.norm(own - centre, axis=1).max()) + margin
    others = np.linalg.norm(cloud[:, :2] - centre, axis=1) > radius
    return centre, radius, others


def fingertip_centre(model, q: np.ndarray) -> np.ndarray:
    """The centre [3] (m, base frame) of the hand's fingertips at joints ``q`` [23] (rad, driver order)."""
    poses = model.forward(q)
    return np.mean([poses[s][:3, 3] for s in FINGERTIP_FRAMES], axis=0)


#: How many of the first frames (the scene still, the hand far) are pooled to find the objects.
STILL_FRAMES = 20


class SceneBeforeGrasp(NamedTuple):
    """A point-cloud demo before its grasp (:func:`scene_before_grasp`)."""

    grasp: int              # the grasp step (:func:`grasp_step`)
    centre: np.ndarray      # [2] m, x-y: the object taken
    radius: float           # m, horizontally, with the margin: what lies farther belongs to the others
    others: np.ndarray      # [M, 2] m, x-y: the other objects' points in the first frames pooled

    @property
    def others_centre(self) -> np.ndarray | None:
        """Where the objects not taken stand ([2] m, x-y), or None when the cloud holds only the one taken."""
        return self.others.mean(axis=0) if len(self.others) else None


def scene_before_grasp(ep: Episode, model, hand_cols) -> SceneBeforeGrasp:
    """The grasp step, the object taken and the others' points, from the first frames of ``ep``
    pooled and the fingertips at the grasp (``model``: the robot's URDF kinematics).

    Raises:
        PolicyError: the visual input is not point clouds, or the hand never closes.
    """
    vis = point_clouds(ep, "finding the object taken")
    g = grasp_step(ep, hand_cols)
    pooled = np.asarray(vis[: max(1, min(g, STILL_FRAMES))], float).reshape(-1, 3)
    centre, radius, others = split_taken(pooled, fingertip_centre(model, ep.q[g]))
    return SceneBeforeGrasp(g, centre, radius, pooled[others, :2])


def approach_with_others_moved(ep: Episode, scene: SceneBeforeGrasp, spots: np.ndarray, copies: int,
                               rng: np.random.Generator, box_min, box_max, clearance: float = 0.03,
                               tries: int = 50) -> list[Episode]:
    """Up to ``copies`` copies of ``ep``'s approach (windows end at its grasp step; ``scene``: its
    :func:`scene_before_grasp`) with the points of the objects not taken moved so that their
    centre lands on a spot drawn uniformly in the rectangle spanned by ``spots`` [S, 2] (m, x-y:
    where the demos' other objects stood), among those that keep the moved points ``clearance``
    (m) clear of the object taken (horizontally) and inside the crop box (``box_min``/``box_max``,
    x-y used), at most ``tries`` draws a copy. Fewer copies where no spot fits, none where the
    cloud holds one object.

    Raises:
        PolicyError: the visual input is not point clouds [N, P, 3].
    """
    vis = point_clouds(ep, "moving the other objects")
    g, centre, radius, pts = scene
    spots = np.asarray(spots, float).reshape(-1, 2)
    here = scene.others_centre
    if here is None or len(spots) == 0:
        return []
    lo, hi = np.asarray(box_min, float)[:2], np.asarray(box_max, float)[:2]
    s_lo, s_hi = spots.min(axis=0), spots.max(axis=0)

    def fits(s) -> bool:
        moved = pts + (s - here)
        return bool(np.linalg.norm(moved - centre, axis=1).min() >= radius + clearance
                    and (moved >= lo).all() and (moved <= hi).all())

    out = []
    for _ in range(copies):
        draws = (rng.uniform(s_lo, s_hi) for _ in range(tries))
        spot = next((s for s in draws if fits(s)), None)
        if spot is None:
            continue
        v = np.array(vis, np.float32, copy=True)
        before = v[: g + 1, :, :2]                     # a view: the frames up to the grasp
        away = np.linalg.norm(before - centre, axis=-1) > radius
        before[away] += (spot - here).astype(np.float32)
        out.append(Episode(ep.q, ep.actions, v, train_until=g))
    return out


def turned_after_grasp(ep: Episode, hand_cols, joint1: int, angles) -> list[Episode]:
    """Copies of ``ep`` with the whole cell turned about joint 1's axis (the base's vertical) by each
    of ``angles`` (rad): joint 1 and its targets (column ``joint1``) plus the angle, the point clouds
    (base frame) turned, the rest as it was, and training windows from the grasp step on.

    The turn is a symmetry of the arm and of the objects on the table, not of the start: every demo
    starts from the same home posture, so a turned approach starts where no rollout does. From the
    grasp on, the object is in the hand and the carry runs from wherever the grasp was to the
    container: a turned carry is a carry between two other places.

    Raises:
        PolicyError: the visual input is not a point cloud [N, P, 3], or the hand never closes.
    """
    vis = point_clouds(ep, "turning the cell")
    g = grasp_step(ep, hand_cols)
    out = []
    for a in angles:
        c, s = np.cos(a), np.sin(a)
        v = np.array(vis, np.float32, copy=True)
        x, y = vis[..., 0].astype(float), vis[..., 1].astype(float)
        v[..., 0], v[..., 1] = c * x - s * y, s * x + c * y
        q, act = np.array(ep.q, float, copy=True), np.array(ep.actions, float, copy=True)
        q[:, joint1] += a
        act[:, joint1] += a
        out.append(Episode(q, act, v, train_from=g))
    return out
