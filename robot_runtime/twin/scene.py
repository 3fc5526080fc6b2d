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
