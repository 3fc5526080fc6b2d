"""Copies of a point-cloud demo that are demos too: the approach with the other objects moved
(which object to take, taught), the carry in a turned cell (:func:`turned_after_grasp`), the
whole demo at another placement (:func:`shifted_cell`) and at its mirrored placement by the same
hand (:func:`mirrored_keeping_the_hand`).

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
from robot_runtime import description as D
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


def approach_progress(ep: Episode, model, grasp: int, flange: str) -> np.ndarray:
    """How far along its approach ``ep`` is at each step [N], from 0 at the start to 1 at the grasp
    step ``grasp`` and after: the flange's path length so far (forward kinematics of the measured
    joints) over its length up to the grasp."""
    walked = _approach_walked(ep, model, grasp, flange)
    s = np.ones(len(ep.q))
    s[: len(walked)] = walked / walked[-1] if walked[-1] > 1e-6 else 1.0
    return s


def _approach_walked(ep: Episode, model, grasp: int, flange: str) -> np.ndarray:
    """The flange's path length (m) from the start to each step up to the grasp step ``grasp``
    [min(grasp, N - 1) + 1], by forward kinematics of the measured joints."""
    return _walked(np.array([model.link_pose(ep.q[t], flange)[:3, 3]
                             for t in range(min(grasp, len(ep.q) - 1) + 1)]))


def _walked(at: np.ndarray) -> np.ndarray:
    """The path length (m) up to each of the points ``at`` [K, 3] (m) along the path through them [K]."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(at, axis=0), axis=1))])


def _path_fraction(at: np.ndarray) -> np.ndarray:
    """How far along the path through the points ``at`` [K, 3] (m) each is [K]: the path length up to
    it over the whole length (all 1 where the path has no length)."""
    walked = _walked(at)
    return walked / walked[-1] if walked[-1] > 1e-6 else np.ones(len(walked))


def _bent_copy(ep: Episode, model, weights: np.ndarray, offset: np.ndarray, arm, flange: str,
               max_error: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``ep``'s joints and targets with the flange moved by ``weights`` [N] times ``offset`` [3] (m),
    each target with the weight of the step it is for (the next step's); None where inverse
    kinematics misses a pose (see :func:`_bend`)."""
    q = _bend(model, ep.q, weights[:, None] * offset, arm, flange, max_error)
    if q is None:
        return None
    a = _bend(model, ep.actions, np.append(weights[1:], weights[-1])[:, None] * offset, arm, flange, max_error)
    return None if a is None else (q, a)


def _bend(model, q: np.ndarray, offsets: np.ndarray, arm, flange: str, max_error: float) -> np.ndarray | None:
    """``q`` [N, 23] with the arm's joints (indices ``arm``) moved so that the flange is at its pose
    plus ``offsets`` [N, 3] (m), orientation kept (see :func:`_retarget`)."""
    def shift(t, pose):
        m = np.eye(4)
        m[:3, 3] = offsets[t]
        return m

    return _retarget(model, q, shift, arm, flange, max_error)


def _retarget(model, q: np.ndarray, move_of, arm, flange: str, max_error: float,
              turn_joint: int | None = None) -> np.ndarray | None:
    """``q`` [N, 23] with the arm's joints (indices ``arm``) moved so that the flange's pose is
    ``move_of(t, pose)`` [4, 4] (a rigid motion in the base frame) applied to its pose [4, 4] at
    ``q[t]``. None where a step's solve is off by more than ``max_error`` (m) or 10x that (rad).

    Each step's solve starts from the previous step's change; or, with ``turn_joint`` (the index
    in ``q`` of the joint that turns the arm about the base's vertical), from the demo's own
    posture with that joint turned by the motion's angle about the vertical, and stays the
    solution nearest it: a motion that is mostly a turn about the vertical is then mostly that
    one joint, and the copy keeps the demo's posture (elbow, wrist) where a solve that carries
    its changes along can drift onto another posture of the same pose."""
    from robot_runtime.ik import solve_ik  # noqa: PLC0415

    out = np.array(q, float, copy=True)
    arm = np.asarray(arm)
    change = np.zeros(len(arm))
    eye = np.eye(4)
    for t in range(len(q)):
        pose = model.link_pose(q[t], flange)
        move = move_of(t, pose)
        if np.allclose(move, eye):
            change[:] = 0.0
            continue
        goal = move @ pose
        seed = np.array(q[t], float, copy=True)
        if turn_joint is None:
            seed[arm] += change
            rest = None
        else:
            seed[turn_joint] += np.arctan2(move[1, 0], move[0, 0])
            rest = seed
        sol, pos_err, rot_err = solve_ik(model, seed, flange, goal, arm, iters=50, tol_pos=2e-5, tol_rot=2e-4,
                                         q_rest=rest)
        if pos_err > max_error or rot_err > 10 * max_error:
            return None
        out[t, arm] = sol[arm]
        change = sol[arm] - q[t, arm]
    return out


def shifted_cell(ep: Episode, scene: SceneBeforeGrasp, model, arm_cols, region_min, region_max, copies: int,
                 rng: np.random.Generator, radius: float = 0.05, box_min=None, box_max=None,
                 flange: str = "flange", max_error: float = 1e-3, tries: int = 50) -> list[Episode]:
    """Up to ``copies`` copies of ``ep`` with every object on the table moved by one offset across
    the table (drawn in a disc of ``radius`` m), the arm's path bent onto the moved objects: the
    demo at a placement it was not recorded at.

    A translation across the table is a symmetry of the objects, not of the robot, and not of the
    start: every demo starts from the same home posture. So the flange's pose at each step is the
    demo's plus the offset times the approach's progress (:func:`approach_progress`: 0 at home, 1 from
    the grasp step on), orientation kept, and the arm's joints are solved for it by inverse
    kinematics (joints and targets alike; each target with the progress of the step it is for). The
    copy starts at home, converges on the moved object during the approach and, from the grasp on,
    is the demo moved whole: the lift, the carry to the moved container, the release. The hand's
    joints and targets are the demo's; the clouds (base frame) move with the offset.

    ``scene``: the demo's :func:`scene_before_grasp`. An offset is kept when the object taken and
    the others' centre stay inside the rectangle ``region_min``-``region_max`` (x-y, m: where the
    demos' objects stood), every point inside the crop box (``box_min``/``box_max``, x-y), and
    inverse kinematics reaches every pose within ``max_error``; at most ``tries`` draws a copy.

    Raises:
        PolicyError: the visual input is not point clouds [N, P, 3], or the hand never closes.
    """
    vis = point_clouds(ep, "moving the cell")
    lo, hi = np.asarray(region_min, float)[:2], np.asarray(region_max, float)[:2]
    centres = [scene.centre] + ([scene.others_centre] if scene.others_centre is not None else [])
    pts = np.asarray(vis, float)[..., :2].reshape(-1, 2)
    p_lo, p_hi = pts.min(axis=0), pts.max(axis=0)
    b_lo = np.full(2, -np.inf) if box_min is None else np.asarray(box_min, float)[:2]
    b_hi = np.full(2, np.inf) if box_max is None else np.asarray(box_max, float)[:2]

    def fits(d) -> bool:
        return bool(all((c + d >= lo).all() and (c + d <= hi).all() for c in centres)
                    and (p_lo + d >= b_lo).all() and (p_hi + d <= b_hi).all())

    s = approach_progress(ep, model, scene.grasp, flange)
    out = []
    for _ in range(copies):
        for _ in range(tries):
            r, phi = radius * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
            d = np.array([r * np.cos(phi), r * np.sin(phi)])
            if not fits(d):
                continue
            bent = _bent_copy(ep, model, s, np.array([d[0], d[1], 0.0]), arm_cols, flange, max_error)
            if bent is None:
                continue
            v = np.array(vis, np.float32, copy=True)
            v[..., :2] += d.astype(np.float32)
            out.append(Episode(*bent, v, ep.train_until, ep.train_from))
            break
    return out


def detour_weight(ep: Episode, model, grasp: int, flange: str, settle_m: float) -> np.ndarray:
    """How much of a detour each step of ``ep`` carries [N], in [0, 1]: 0 at the start, growing
    with the flange's path length (forward kinematics of the measured joints) to 1 where
    ``settle_m`` (m) of the path to the grasp step ``grasp`` is left, back to 0 over that last
    stretch (smoothstep each way), 0 from the grasp on."""
    walked = _approach_walked(ep, model, grasp, flange)
    total = walked[-1]
    w = np.zeros(len(ep.q))
    if total <= settle_m:
        return w
    up = np.clip(walked / (total - settle_m), 0.0, 1.0)
    down = np.clip((total - walked) / settle_m, 0.0, 1.0)
    x = np.minimum(up, down)
    w[: len(walked)] = x * x * (3.0 - 2.0 * x)
    return w


def detoured_approach(ep: Episode, scene: SceneBeforeGrasp, model, arm_cols, copies: int,
                      rng: np.random.Generator, radius: float = 0.04, settle_m: float = 0.1,
                      flange: str = "flange", max_error: float = 1e-3, tries: int = 20) -> list[Episode]:
    """Up to ``copies`` copies of ``ep`` whose approach arrives off the demo's by an offset and
    corrects it on the last ``settle_m`` (m) of the way to the grasp: what a demonstrator's hand
    does when it comes down beside an object a few centimetres off and homes in on it.

    A policy's approach from home ends 1-4 cm off the demos' (what it reaches depends on how it
    got there), and a demo set whose approaches all arrive where they should never shows the way
    back: from an off pre-grasp a policy goes on as from the demo's, keeping the offset into the
    grasp. Here the flange's pose at each step is the demo's plus the offset times
    :func:`detour_weight` (0 at home, 1 with ``settle_m`` of the path left, 0 at the grasp and
    after), orientation kept, the joints solved by inverse kinematics (joints and targets alike;
    each target with the weight of the step it is for). The offset is drawn in a disc of
    ``radius`` m across the table and +-``radius``/2 m up or down. The objects do not move: the
    clouds and the hand are the demo's; from the grasp on the copy is the demo.

    ``scene``: the demo's :func:`scene_before_grasp`. A draw is kept when inverse kinematics
    reaches every pose within ``max_error`` (at most ``tries`` draws a copy).

    Raises:
        PolicyError: the visual input is not point clouds [N, P, 3], or the hand never closes.
    """
    vis = point_clouds(ep, "detouring the approach")
    w = detour_weight(ep, model, scene.grasp, flange, settle_m)
    out = []
    for _ in range(copies):
        for _ in range(tries):
            r, phi = radius * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
            d = np.array([r * np.cos(phi), r * np.sin(phi), rng.uniform(-0.5, 0.5) * radius])
            bent = _bent_copy(ep, model, w, d, arm_cols, flange, max_error)
            if bent is not None:
                out.append(Episode(*bent, np.array(vis, copy=True), ep.train_until, ep.train_from))
                break
    return out


#: How close (m) the flange comes to its grasp pose before a mirrored copy's approach follows the
#: demo's own, turned about the object (:func:`mirrored_keeping_the_hand`).
FINAL_APPROACH_M = 0.2
#: The hand frame whose +z is the fingers' direction (its heading is what a mirrored grasp mirrors).
PALM_FRAME = "palm"


def circle_centre(xy: np.ndarray) -> np.ndarray:
    """The centre [2] (m) of the circle fitted to points [K, 2] (m): the axis of a round object from
    the arc of its surface a camera sees, where the points' mean lies toward the camera. The
    geometric fit (distances to the circle, robust loss), started from the algebraic one, which
    a half-seen arc pulls toward the camera (twin bottles: 0.7-1.3 cm off, against 0.1-0.6 cm)."""
    from scipy.optimize import least_squares  # noqa: PLC0415

    xy = np.asarray(xy, float)
    a = np.c_[2.0 * xy, np.ones(len(xy))]
    sol, *_ = np.linalg.lstsq(a, (xy ** 2).sum(axis=1), rcond=None)
    c0 = sol[:2]
    # the arc seen is at most a half circle: its width across (the principal axis, stray points
    # aside) is at most the diameter
    d = xy - xy.mean(axis=0)
    along = d @ np.linalg.svd(d, full_matrices=False)[2][0]
    r_min = 0.5 * float(np.percentile(along, 98) - np.percentile(along, 2))
    r0 = max(float(np.linalg.norm(xy - c0, axis=1).mean()), r_min * 1.01)
    fit = least_squares(lambda p: np.linalg.norm(xy - p[:2], axis=1) - p[2], np.r_[c0, r0],
                        loss="soft_l1", f_scale=0.003, bounds=([-np.inf, -np.inf, r_min], [np.inf, np.inf, np.inf]))
    return fit.x[:2]


def _turn_about(point, angle: float, to) -> np.ndarray:
    """The rigid motion [4, 4] that turns about the vertical through ``point`` [2] by ``angle``
    (rad) and then carries ``point`` to ``to`` [2] (m, x-y)."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = np.asarray(to, float) - m[:2, :2] @ np.asarray(point, float)
    return m


def _heading(model, q: np.ndarray) -> float:
    """The fingers' heading (rad, about the base's vertical; 0 along +x) at joints ``q`` [23]."""
    z = model.link_pose(q, PALM_FRAME)[:3, 2]
    return float(np.arctan2(z[1], z[0]))


def _blend(a: np.ndarray, b: np.ndarray, w: float, at) -> np.ndarray:
    """The rigid motion about the vertical [4, 4] that takes the point ``at`` [3] (m) to ``(1 - w)``
    of where ``a`` [4, 4] takes it plus ``w`` of where ``b`` does, turning by the angles' mix:
    between two motions, a path that moves with the point instead of swinging about the origin."""
    ang = (1.0 - w) * np.arctan2(a[1, 0], a[0, 0]) + w * np.arctan2(b[1, 0], b[0, 0])
    at = np.asarray(at, float)
    to = (1.0 - w) * (a[:3, :3] @ at + a[:3, 3]) + w * (b[:3, :3] @ at + b[:3, 3])
    out = np.eye(4)
    c, s = np.cos(ang), np.sin(ang)
    out[:2, :2] = [[c, -s], [s, c]]
    out[:3, 3] = to - out[:3, :3] @ at
    return out


def mirrored_keeping_the_hand(ep: Episode, scene: SceneBeforeGrasp, model, arm_cols, flange: str = "flange",
                              max_error: float = 1e-3, turn_joint: int | None = None) -> Episode | None:
    """``ep`` at its placement mirrored across the base's x-z plane (every object at y -> -y),
    done by the same hand: the grasp and the release of a right hand, not their mirror images.

    :func:`policies.bc.mirror_episode` mirrors the arm's joints too, and the hand it poses is a
    left hand's mirror image: a top grasp survives that, a side grasp is held thumb down and
    does not. Here the objects are mirrored and the arm is re-posed by inverse kinematics so that
    the hand takes and puts down round objects as the demonstrator does: at the grasp, the hand's
    pose turned about the taken object's axis until the fingers' heading is the demo's mirrored
    (``psi -> -psi``: a demonstrator who faces the object from the base mirrors its facing with the
    object's place) and carried onto the mirrored object; at the demo's end the same about the
    other object's axis (the container's). The flange's pose at each step is the demo's under a
    rigid motion about the vertical that grows with the approach's progress
    (:func:`approach_progress`) from none at home to the grasp's, reached where the flange comes
    within :data:`FINAL_APPROACH_M` of its grasp pose (the way down beside the object is the
    demo's own, turned), then changes with the flange's path after the grasp to the end's. In
    the clouds, the taken object up to the grasp and the container throughout are their own
    points moved to their mirrored places, not mirrored: a camera on one side of the table sees
    a round object's near side wherever it stands, and a mirrored cloud shows the far side
    (with the twin's camera on the right, a bottle's points 2 x its radius to the left of where a
    real left-hand bottle's are). After the grasp the held object's points move with the hand.
    Round objects only (their axes: circles fitted to the first frames' points,
    :func:`circle_centre`). The hand's joints and targets are the demo's.

    Returns None where inverse kinematics misses a pose by more than ``max_error`` (m).

    Raises:
        PolicyError: the visual input is not point clouds [N, P, 3], or the hand never closes.
    """
    vis = point_clouds(ep, "mirroring the placement")
    g = scene.grasp
    pooled = np.asarray(vis[: max(1, min(g, STILL_FRAMES))], float).reshape(-1, 3)
    near = np.linalg.norm(pooled[:, :2] - scene.centre, axis=1) <= scene.radius
    axis = circle_centre(pooled[near, :2]) if near.sum() >= 3 else scene.centre
    flip = np.array([1.0, -1.0])
    grasp = _turn_about(axis, -2.0 * _heading(model, ep.q[g]), axis * flip)
    end = grasp
    other = None
    if len(scene.others):
        other = circle_centre(scene.others) if len(scene.others) >= 3 else scene.others.mean(axis=0)
        # the container is faced from the base: its mirror image is the same turn about the base's
        # vertical (the fingers' heading at the end is no measure of the facing: a pour rolls it)
        end = _turn_about(other, -2.0 * np.arctan2(other[1], other[0]), other * flip)
    # the approach: from home to the demo's pose turned about the object, the turn complete where
    # the flange comes within ``FINAL_APPROACH_M`` of the grasp (the hand's way down beside the
    # object is the demo's own, turned: a blend still under way there passes through the object)
    flange_at = np.array([model.link_pose(q, flange)[:3, 3] for q in ep.q])
    s = approach_progress(ep, model, g, flange)
    inside = np.flatnonzero(np.linalg.norm(flange_at[: g + 1] - flange_at[g], axis=1) <= FINAL_APPROACH_M)
    if len(inside) and s[inside[0]] > 0.0:
        s = np.minimum(1.0, s / s[inside[0]])
    after = _path_fraction(flange_at[g:])

    def motion(t: int, at) -> np.ndarray:
        """The rigid motion of step ``t`` for a flange at ``at`` [3] (m)."""
        t = min(t, len(ep.q) - 1)
        if t <= g:
            return _blend(np.eye(4), grasp, s[t], at)
        return _blend(grasp, end, after[t - g], at)

    q = _retarget(model, ep.q, lambda t, pose: motion(t, pose[:3, 3]), arm_cols, flange, max_error, turn_joint)
    a = None if q is None else _retarget(model, ep.actions, lambda t, pose: motion(t + 1, pose[:3, 3]), arm_cols,
                                         flange, max_error, turn_joint)
    if a is None:
        return None
    # The clouds. A camera on one side of the table sees a round object's near side wherever it
    # stands: the object at its mirrored place looks like its own cloud moved there (its axis
    # y -> -y), not like its mirror image, which shows the far side (a surface 2 x its radius off
    # toward the other side of the table). Other points (none on the twin) are mirrored.
    v = np.array(vis, np.float32, copy=True)
    v[..., 1] *= -1.0
    top = pooled[~near, 2].max() + 0.01 if (~near).any() else -np.inf
    reach = None if other is None else float(np.linalg.norm(scene.others - other, axis=1).max()) + 0.02

    def container(p: np.ndarray) -> np.ndarray:
        if other is None:
            return np.zeros(len(p), bool)
        return (np.linalg.norm(p[:, :2] - other, axis=1) <= reach) & (p[:, 2] <= top)

    for t in range(len(v)):
        p = np.asarray(vis[t], float)
        box = container(p)
        if box.any():
            v[t, box, 1] = (p[box, 1] - 2.0 * other[1]).astype(np.float32)
        if t <= g:
            taken = ~box & (np.linalg.norm(p[:, :2] - scene.centre, axis=1) <= scene.radius)
            v[t, taken, 1] = (p[taken, 1] - 2.0 * axis[1]).astype(np.float32)
        else:
            # after the grasp the held object's points move with the hand
            m = motion(t, flange_at[t])
            v[t, ~box] = (p[~box] @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
    return Episode(q, a, v, ep.train_until, ep.train_from)


def mirrored_copies(episodes: list[Episode], model=None) -> list[Episode | None]:
    """:func:`mirrored_keeping_the_hand` of each of ``episodes`` (with the twin robot's joint order
    and flange; ``model``: its URDF kinematics, loaded when None), None where it has no copy.

    Raises:
        PolicyError: an episode's visual input is not point clouds, or its hand never closes.
    """
    from robot_runtime.kinematics import UrdfModel  # noqa: PLC0415

    model = model or UrdfModel.from_file(D.description_path(D.URDF_NAME))
    hand, arm = range(len(D.ARM_JOINTS), len(D.ALL_JOINTS)), np.arange(len(D.ARM_JOINTS))
    turn = D.ALL_JOINTS.index("joint1")
    return [mirrored_keeping_the_hand(e, scene_before_grasp(e, model, hand), model, arm, D.FLANGE_FRAME,
                                      turn_joint=turn) for e in episodes]
