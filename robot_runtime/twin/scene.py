"""The MuJoCo scene of the lab cell: floor, robot on its pedestal, table, ZED-like camera, objects.

Frames: the world frame is the robot's base frame (x forward, z up, origin on the
mounting surface). The table top is at z = 0, 0.3 m to 1.0 m in front of the robot
(its centre about 0.65 m away). Objects for every task are always in the model; those
not used by the current task are parked on the floor behind the robot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot_runtime.description import build
from robot_runtime.transforms import look_at_axes

TABLE_TOP_Z = 0.0
TABLE_CENTER = (0.65, 0.0)
TABLE_HALF = (0.35, 0.5)
FLOOR_Z = -0.75


@dataclass(frozen=True)
class ObjectSpec:
    """A free object: its MJCF geoms (in its own frame) and the height of its frame above its base."""

    name: str
    geoms: str
    rest_z: float  # object-frame origin height above the surface it rests on (m)
    mass: float


def _bowl_geoms(radius=0.075, wall_h=0.05, n=14) -> str:
    parts = [f'<geom type="cylinder" size="{radius} 0.004" pos="0 0 0.004" rgba="0.75 0.3 0.25 1"/>']
    half_w = radius * math.tan(math.pi / n) + 0.002
    for k in range(n):
        a = 2 * math.pi * k / n
        parts.append(f'<geom type="box" size="0.004 {half_w:.5f} {wall_h / 2}" pos="{radius * math.cos(a):.5f} '
                     f'{radius * math.sin(a):.5f} {wall_h / 2 + 0.004}" euler="0 0 {a:.5f}" rgba="0.75 0.3 0.25 1"/>')
    return "".join(parts)


OBJECTS: dict[str, ObjectSpec] = {
    "cube": ObjectSpec("cube", '<geom type="box" size="0.025 0.025 0.025" rgba="0.2 0.6 0.9 1"/>', 0.025, 0.06),
    "bowl": ObjectSpec("bowl", _bowl_geoms(), 0.0, 0.2),
    "bottle": ObjectSpec("bottle", '<geom type="cylinder" size="0.032 0.07" pos="0 0 0.07" rgba="0.2 0.7 0.3 1"/>'
                         '<geom type="cylinder" size="0.013 0.025" pos="0 0 0.165" rgba="0.2 0.7 0.3 1"/>', 0.0, 0.25),
    "can": ObjectSpec("can", '<geom type="cylinder" size="0.033 0.055" rgba="0.85 0.1 0.1 1"/>', 0.055, 0.12),
    "ball": ObjectSpec("ball", '<geom type="sphere" size="0.035" rgba="0.95 0.8 0.1 1"/>', 0.035, 0.08),
    "block": ObjectSpec("block", '<geom type="box" size="0.025 0.04 0.035" rgba="0.6 0.4 0.8 1"/>', 0.035, 0.1),
    "mug": ObjectSpec("mug", '<geom type="cylinder" size="0.04 0.045" rgba="0.9 0.9 0.85 1"/>'
                      '<geom type="box" size="0.006 0.012 0.03" pos="0.048 0 0" rgba="0.9 0.9 0.85 1"/>', 0.045, 0.15),
}

#: HOP's tasks: which objects take part. grasp_lift uses one of its four objects per episode.
TASKS: dict[str, tuple[str, ...]] = {
    "grasp_drop": ("cube", "bowl"),
    "grasp_pour": ("bottle", "bowl"),
    "grasp_lift": ("can", "ball", "block", "mug"),
}
#: The scene the prior's task-agnostic interactions are played in: no task's objects, but two drawn
#: per seed, one the hand can take (:data:`INTERACTION_HELD`) and another it may carry it to
#: (:data:`INTERACTION_OTHER`, any but the first; not the bottle, taller than a carry clears).
INTERACTION_SCENE = "interaction"
INTERACTION_HELD = ("cube", "can", "ball", "block", "mug", "bottle")
INTERACTION_OTHER = ("cube", "bowl", "can", "ball", "block", "mug")


def scene_objects(name: str, rng: np.random.Generator) -> tuple[str, ...]:
    """The objects on the table for the scene ``name`` (a task of :data:`TASKS` or
    :data:`INTERACTION_SCENE`), drawn with ``rng`` where the scene draws them: grasp & lift takes one
    of its four objects, the interaction scene an object to hold and another.

    Raises:
        KeyError: ``name`` is no scene.
    """
    if name == INTERACTION_SCENE:
        held = INTERACTION_HELD[int(rng.integers(len(INTERACTION_HELD)))]
        others = [o for o in INTERACTION_OTHER if o != held]
        return held, others[int(rng.integers(len(others)))]
    objs = TASKS[name]
    if name == "grasp_lift":
        return (objs[int(rng.integers(len(objs)))],)
    return objs


#: Where objects rest on the table (x, y ranges in the base frame, m).
PLACEMENT_X = (0.42, 0.62)
PLACEMENT_Y = (-0.18, 0.18)
#: Least distance between two objects' centres (m). The open Allegro hand reaches about 20 cm
#: across: at 17 cm its fingers caught the bowl's rim while closing on the cube in 2 of 15
#: scripted grasp & drop demos (the bowl was dragged along); at 22 cm, 19 of 20 demos succeed.
MIN_SEPARATION = 0.22


def draw_placement(name: str, seed: int) -> dict[str, tuple[float, float, float]]:
    """Where the scene ``name`` puts its objects for ``seed``: ``{object: (x m, y m, yaw rad)}``
    in the scene's order (:func:`scene_objects`: the held object first), the spots at least
    :data:`MIN_SEPARATION` apart (the whole set is drawn again until it fits). Pure and
    reproducible: the twin's reset places exactly these.

    Raises:
        KeyError: ``name`` is no scene.
        ValueError: no fitting set in 1000 draws.
    """
    rng = np.random.default_rng(int(seed))
    objs = scene_objects(name, rng)
    names = [n for n in OBJECTS if n in objs]
    for _ in range(1000):
        xy = [(rng.uniform(*PLACEMENT_X), rng.uniform(*PLACEMENT_Y)) for _ in names]
        if all(math.dist(a, b) >= MIN_SEPARATION for i, a in enumerate(xy) for b in xy[:i]):
            break
    else:  # pragma: no cover - the ranges leave room
        raise ValueError(f"could not place {names} {MIN_SEPARATION} m apart for scene {name!r}")
    drawn = {n: (float(x), float(y), float(rng.uniform(-math.pi, math.pi))) for n, (x, y) in zip(names, xy)}
    return {n: drawn[n] for n in objs}


def covering_seeds(name: str, n: int, seed0: int = 0, pool: int = 400, among=None) -> list[int]:
    """``n`` seeds of the scene ``name`` whose placements cover the table the way its
    placements fall: the seeds ``seed0 .. seed0 + pool - 1`` (or the seeds ``among``: the n of
    some recorded demos that cover best) are grouped by the objects they put out, each group
    given its share of ``n`` (largest remainders), and within a group the placements (every
    object's x, y, scaled to the placement ranges) split into that many
    k-means cells; each cell gives the seed nearest its centre. Demos at these seeds are spread
    where a policy will be asked to act, where ``n`` consecutive seeds can leave a side bare
    (11 of the first 15 grasp & pour seeds have the bottle on the right). Sorted; pure.

    Raises:
        ValueError: ``n`` < 1 or more than the candidates.
    """
    candidates = list(range(seed0, seed0 + pool)) if among is None else sorted({int(s) for s in among})
    pool = len(candidates)
    if not 1 <= n <= pool:
        raise ValueError(f"covering_seeds: n must be 1..pool ({pool}), got {n}")
    span = np.array([PLACEMENT_X[1] - PLACEMENT_X[0], PLACEMENT_Y[1] - PLACEMENT_Y[0]])
    groups: dict[tuple[str, ...], list[tuple[int, np.ndarray]]] = {}
    for seed in candidates:
        placed = draw_placement(name, seed)
        f = np.concatenate([np.array(v[:2]) / span for v in placed.values()])
        groups.setdefault(tuple(placed), []).append((seed, f))
    keys = sorted(groups, key=lambda k: (-len(groups[k]), k))
    quota = {k: n * len(groups[k]) // pool for k in keys}
    for k in sorted(keys, key=lambda k: (-(n * len(groups[k]) % pool), keys.index(k)))[:n - sum(quota.values())]:
        quota[k] += 1
    chosen: list[int] = []
    for k in keys:
        if quota[k]:
            seeds, feats = zip(*groups[k])
            chosen += _cell_centres(list(seeds), np.stack(feats), quota[k])
    return sorted(chosen)


def _cell_centres(seeds: list[int], feats: np.ndarray, k: int, iters: int = 50) -> list[int]:
    """The seeds nearest the centres of ``k`` k-means cells of ``feats`` [N, D] (deterministic:
    farthest-point start from the point nearest the mean), each seed used once."""
    first = int(np.argmin(np.linalg.norm(feats - feats.mean(0), axis=1)))
    idx = [first]
    d = np.linalg.norm(feats - feats[first], axis=1)
    while len(idx) < k:
        idx.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(feats - feats[idx[-1]], axis=1))
    centres = feats[idx].copy()
    for _ in range(iters):
        cell = np.argmin(np.linalg.norm(feats[:, None] - centres[None], axis=2), axis=1)
        moved = np.stack([feats[cell == c].mean(0) if np.any(cell == c) else centres[c] for c in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    picked: list[int] = []
    for c in centres:
        order = np.argsort(np.linalg.norm(feats - c, axis=1))
        picked.append(seeds[int(next(i for i in order if seeds[int(i)] not in picked))])
    return picked


def parking_position(index: int) -> tuple[float, float, float]:
    """Floor spot behind the robot for an object that the current task does not use."""
    return (-0.9, -0.9 + 0.3 * index, FLOOR_Z)


def scene_xml(*, physics_hz: float, camera_position, camera_look_at, camera_fovy_deg: float,
              image_width: int, image_height: int, mount_xyz, mount_rpy, hand_torque_limit: float,
              palm_geoms: str = "", offscreen: tuple[int, int] | None = None) -> str:
    """The whole lab-cell MJCF as text. ``palm_geoms`` are added to the palm's body (the
    calibration marker); ``offscreen`` is the largest image rendered (default: the depth image)."""
    robot = build.mjcf_parts(mount_xyz, mount_rpy, hand_torque_limit)
    if palm_geoms:
        at = robot["body"].index('<body name="palm"')
        at = robot["body"].index(">", at) + 1
        robot["body"] = robot["body"][:at] + "\n" + palm_geoms + robot["body"][at:]
    right, up, _ = look_at_axes(camera_position, camera_look_at)
    xy = " ".join(f"{v:.6f}" for v in np.concatenate([right, up]))
    cam_pos = " ".join(f"{v:.6f}" for v in camera_position)
    body = robot["body"].replace('<body name="link_base"', '<body name="link_base" childclass="robot"', 1)
    objects = []
    for i, spec in enumerate(OBJECTS.values()):
        px, py, pz = parking_position(i)
        geoms = spec.geoms.replace("<geom ", '<geom class="object" ')
        objects.append(f'    <body name="{spec.name}" pos="{px} {py} {pz + spec.rest_z + 0.001}">\n'
                       f'      <freejoint name="{spec.name}_joint"/>\n'
                       f'      <inertial pos="0 0 {spec.rest_z * 0.6:.4f}" mass="{spec.mass}" diaginertia="2e-4 2e-4 2e-4"/>\n'
                       f'      {geoms}\n'
                       f'    </body>')
    cx, cy = TABLE_CENTER
    hx, hy = TABLE_HALF
    table_hz = (TABLE_TOP_Z - FLOOR_Z) / 2
    ped_hz = (0.0 - FLOOR_Z) / 2
    offw, offh = max(image_width, 640, (offscreen or (0, 0))[0]), max(image_height, 480, (offscreen or (0, 0))[1])
    return f"""<mujoco model="lab_cell">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{1.0 / physics_hz:.6g}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <statistic extent="2" center="0.4 0 0"/>
  <visual>
    <global offwidth="{offw}" offheight="{offh}"/>
    <map znear="0.005" zfar="10"/>
    <quality shadowsize="1024"/>
  </visual>
  <default>
{robot["default"]}
    <default class="world"><geom contype="1" conaffinity="3" condim="3" friction="1.0 0.01 0.001"/></default>
    <default class="object"><geom contype="1" conaffinity="3" condim="4" friction="1.0 0.02 0.001" density="0"/></default>
  </default>
  <worldbody>
    <light pos="0.3 -0.5 2.0" dir="0 0.3 -1" diffuse="0.8 0.8 0.8"/>
    <light pos="1.2 0.8 1.5" dir="-0.5 -0.4 -1" diffuse="0.4 0.4 0.4"/>
    <geom name="floor" class="world" type="plane" size="3 3 0.05" pos="0 0 {FLOOR_Z}" rgba="0.45 0.45 0.48 1"/>
    <geom name="pedestal" class="world" type="box" size="0.15 0.15 {ped_hz:.4f}" pos="-0.05 0 {FLOOR_Z + ped_hz:.4f}" rgba="0.3 0.3 0.32 1"/>
    <geom name="table" class="world" type="box" size="{hx} {hy} {table_hz:.4f}" pos="{cx} {cy} {FLOOR_Z + table_hz:.4f}" rgba="0.62 0.5 0.38 1"/>
    <camera name="zed" pos="{cam_pos}" xyaxes="{xy}" fovy="{camera_fovy_deg:.6g}"/>
{body}
{chr(10).join(objects)}
  </worldbody>
  <actuator>
{robot["actuator"]}
  </actuator>
</mujoco>
"""
