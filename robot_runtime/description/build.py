"""Write the URDF and the MJCF of the xArm7 + Allegro from one kinematic table.

Both files come from the same :func:`robot_tree`, so joint names, order, frames and
limits agree by construction; ``tests/unit/test_description.py`` checks that MuJoCo's
forward kinematics of the MJCF and this package's forward kinematics of the URDF agree.

Regenerate the packaged files with ``robot-runtime description --write``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import numpy as np

from robot_runtime import description as D
from robot_runtime.transforms import mat_to_quat, mat_to_rpy, quat_to_mat, rot_x, rpy_to_mat


@dataclass
class Geom:
    """A collision/visual shape in its link's frame. ``kind``: box | cylinder | sphere.

    box: ``size`` = full extents (x, y, z) along the segment frame (z along the segment);
    cylinder: ``size`` = (radius, length); sphere: ``size`` = (radius,).
    The shape's centre is at ``pos`` and its z axis along ``axis``.
    """

    kind: str
    size: tuple
    pos: tuple = (0.0, 0.0, 0.0)
    axis: tuple = (0.0, 0.0, 1.0)

    def rotation(self) -> np.ndarray:
        z = np.asarray(self.axis, float) / np.linalg.norm(self.axis)
        ref = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x = np.cross(ref, z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        return np.column_stack([x, y, z])


@dataclass
class Link:
    """A rigid link: mass (kg), centre of mass and full inertia (kg m^2) in the link frame."""

    name: str
    mass: float
    geoms: list[Geom] = field(default_factory=list)
    com: tuple = (0.0, 0.0, 0.0)
    inertia: np.ndarray | None = None


@dataclass
class Joint:
    """A joint from ``parent`` to ``child``: fixed transform (xyz, 3x3 R), then rotation about ``axis``."""

    name: str
    kind: str  # "revolute" | "fixed"
    parent: str
    child: str
    xyz: tuple
    R: np.ndarray
    axis: tuple = (0.0, 0.0, 1.0)
    limit: tuple = (0.0, 0.0)


# xArm7: (translation, R_x angle) of each joint frame in the previous one; link masses.
_ARM_ROWS = [
    ((0.0, 0.0, 0.267), None),
    ((0.0, 0.0, 0.0), -math.pi / 2),
    ((0.0, -0.293, 0.0), math.pi / 2),
    ((0.0525, 0.0, 0.0), math.pi / 2),
    ((0.0775, -0.3425, 0.0), math.pi / 2),
    ((0.0, 0.0, 0.0), math.pi / 2),
    ((0.076, 0.097, 0.0), -math.pi / 2),
]
_ARM_MASSES = (0.886, 2.382, 1.869, 1.638, 1.727, 1.320, 1.325, 0.170)
# Polyline (in each arm link's frame) from the joint to the next joint, for the shape.
_ARM_PATHS = [
    [(0, 0, 0.0), (0, 0, 0.2)],                                  # base
    [(0, 0, -0.09), (0, 0, 0.0)],                                # link1
    [(0, 0, 0), (0, -0.293, 0)],                                 # link2
    [(0, 0, 0), (0.0525, 0, 0)],                                 # link3
    [(0, 0, 0), (0.0775, 0, 0), (0.0775, -0.3425, 0)],           # link4
    [(0, 0, 0), (0, 0, 0)],                                      # link5 (motor only)
    [(0, 0, 0), (0.076, 0, 0), (0.076, 0.097, 0)],               # link6
    [(0, 0, -0.03), (0, 0, 0)],                                  # link7 (flange disc)
]
_ARM_RADIUS = 0.04

# Allegro: finger base placement in the palm frame, then joint offsets along the finger.
_FINGER_W, _FINGER_D = 0.0196, 0.0275
_TIP_RADIUS = 0.012
_FINGER_BASES = {
    "index": ((0.0, 0.0435, -0.001542), rot_x(math.radians(-5.0))),
    "middle": ((0.0, 0.0, 0.0007), np.eye(3)),
    "ring": ((0.0, -0.0435, -0.001542), rot_x(math.radians(5.0))),
    "thumb": ((-0.0182, 0.019333, -0.045987), quat_to_mat((0.477714, -0.521334, -0.521334, -0.477714))),
}
# Per finger: offsets of joints 1, 2, 3 and of the tip from the previous joint; axes of joints 0-3.
_FINGER_OFFSETS = {
    "index": [(0, 0, 0.0164), (0, 0, 0.054), (0, 0, 0.0384), (0, 0, 0.0267)],
    "thumb": [(-0.027, 0.005, 0.0399), (0, 0, 0.0177), (0, 0, 0.0514), (0, 0, 0.0423)],
}
_FINGER_AXES = {
    "index": [(0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)],
    "thumb": [(-1, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0)],
}
_FINGER_MASSES = (0.012, 0.065, 0.036, 0.027)
_PALM_SIZE = (0.041, 0.113, 0.095)
_PALM_CENTER = (-0.0093, 0.0, -0.0475)
_PALM_MASS = 0.42


def _box_inertia(mass, sx, sy, sz) -> np.ndarray:
    return mass / 12.0 * np.diag([sy * sy + sz * sz, sx * sx + sz * sz, sx * sx + sy * sy])


def _segment_link(name: str, mass: float, points, radius: float, motor: bool) -> Link:
    """A link shaped as cylinders along a polyline (plus a motor housing around z)."""
    pts = [np.asarray(p, float) for p in points]
    geoms = []
    lengths = []
    for a, b in zip(pts[:-1], pts[1:]):
        d = b - a
        L = float(np.linalg.norm(d))
        if L > 1e-6:
            geoms.append(Geom("cylinder", (radius, L), tuple((a + b) / 2), tuple(d / L)))
            lengths.append((L, (a + b) / 2, d / L))
    if motor:
        geoms.append(Geom("cylinder", (radius * 1.15, 0.1), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    # Inertia: mass spread over the segments (as slender cylinders) and the motor block.
    parts = [(L, c, u) for L, c, u in lengths] + ([(0.1, np.zeros(3), np.array([0, 0, 1.0]))] if motor else [])
    total = sum(p[0] for p in parts)
    com = sum(p[0] * p[1] for p in parts) / total
    inertia = np.zeros((3, 3))
    for L, c, u in parts:
        m = mass * L / total
        Ic = m * (3 * radius**2 + L * L) / 12.0
        Ia = m * radius**2 / 2.0
        I_local = Ic * (np.eye(3) - np.outer(u, u)) + Ia * np.outer(u, u)
        r = c - com
        inertia += I_local + m * (np.dot(r, r) * np.eye(3) - np.outer(r, r))
    return Link(name, mass, geoms, tuple(com), inertia)


def _finger_link(name: str, mass: float, offset, tip: bool) -> Link:
    d = np.asarray(offset, float)
    L = float(np.linalg.norm(d))
    u = d / L
    geoms = []
    box_len = max(L - (_TIP_RADIUS if tip else 0.0), 0.005)
    c = u * box_len / 2
    geoms.append(Geom("box", (_FINGER_W, _FINGER_D, box_len), tuple(c), tuple(u)))
    if tip:
        geoms.append(Geom("sphere", (_TIP_RADIUS,), tuple(d - u * _TIP_RADIUS * 0.5)))
    R = geoms[0].rotation()
    inertia = R @ _box_inertia(mass, _FINGER_W, _FINGER_D, L) @ R.T
    return Link(name, mass, geoms, tuple(u * L / 2), inertia)


def robot_tree(mount_xyz=D.DEFAULT_MOUNT_XYZ, mount_rpy=D.DEFAULT_MOUNT_RPY) -> tuple[list[Link], list[Joint]]:
    """The robot's links and joints (joints listed parent-before-child)."""
    links: list[Link] = []
    joints: list[Joint] = []
    links.append(_segment_link("link_base", _ARM_MASSES[0], _ARM_PATHS[0], 0.06, motor=False))
    parent = "link_base"
    for i, ((xyz, ax), lim) in enumerate(zip(_ARM_ROWS, D.ARM_LIMITS)):
        name = f"link{i + 1}"
        links.append(_segment_link(name, _ARM_MASSES[i + 1], _ARM_PATHS[i + 1], _ARM_RADIUS, motor=True))
        R = np.eye(3) if ax is None else rot_x(ax)
        joints.append(Joint(D.ARM_JOINTS[i], "revolute", parent, name, xyz, R, (0, 0, 1), lim))
        parent = name
    links.append(Link(D.FLANGE_FRAME, 0.0))
    joints.append(Joint("flange_fixed", "fixed", "link7", D.FLANGE_FRAME, (0, 0, 0), np.eye(3)))
    palm = Link("palm", _PALM_MASS, [Geom("box", _PALM_SIZE, _PALM_CENTER)], _PALM_CENTER,
                _box_inertia(_PALM_MASS, *_PALM_SIZE))
    links.append(palm)
    joints.append(Joint("hand_mount", "fixed", D.FLANGE_FRAME, "palm", tuple(mount_xyz), rpy_to_mat(mount_rpy)))
    for f_idx, finger in enumerate(D.FINGERS):
        base_xyz, base_R = _FINGER_BASES[finger]
        offsets = _FINGER_OFFSETS["thumb" if finger == "thumb" else "index"]
        axes = _FINGER_AXES["thumb" if finger == "thumb" else "index"]
        prev = "palm"
        for k in range(4):
            j = 4 * f_idx + k
            name = f"link_{j}.0"
            links.append(_finger_link(name, _FINGER_MASSES[k], offsets[k], tip=(k == 3)))
            if k == 0:
                xyz, R = base_xyz, base_R
            else:
                xyz, R = offsets[k - 1], np.eye(3)
            joints.append(Joint(D.HAND_JOINTS[j], "revolute", prev, name, tuple(xyz), R, axes[k], D.HAND_LIMITS[j]))
            prev = name
        tip = f"{finger}_tip"
        links.append(Link(tip, 0.0))
        joints.append(Joint(f"{finger}_tip_fixed", "fixed", prev, tip, tuple(offsets[3]), np.eye(3)))
    return links, joints


def _f(x) -> str:
    return " ".join(f"{float(v) + 0.0:.9g}" for v in np.ravel(x))   # + 0.0: no "-0"


# ------------------------------------------------------------------------------------ URDF

#: The hand-only description's root: the bottom of the palm block (the human wrist's place),
#: this far behind the palm frame along its -z (m).
WRIST_OFFSET = 0.095
WRIST_LINK = "wrist"


def hand_tree() -> tuple[list[Link], list[Joint]]:
    """The Allegro hand alone, rooted at a ``wrist`` link at the palm's base (for finger retargeting)."""
    links, joints = robot_tree()
    keep = {"palm"}
    hand_joints = []
    for j in joints:
        if j.parent in keep:
            keep.add(j.child)
            hand_joints.append(j)
    hand_links = [Link(WRIST_LINK, 0.0)] + [link for link in links if link.name in keep]
    root = Joint("wrist_to_palm", "fixed", WRIST_LINK, "palm", (0.0, 0.0, WRIST_OFFSET), np.eye(3))
    return hand_links, [root] + hand_joints


def hand_urdf_text() -> str:
    """URDF of the hand alone (``wrist`` root, the same joint names and limits as the whole robot)."""
    return _urdf(*hand_tree(), name="allegro_hand_right", title="Allegro hand v4 (right) alone")


def urdf_text(mount_xyz=D.DEFAULT_MOUNT_XYZ, mount_rpy=D.DEFAULT_MOUNT_RPY) -> str:
    """The URDF (for retargeting, IK and visualisation)."""
    return _urdf(*robot_tree(mount_xyz, mount_rpy), name="xarm7_allegro", title="xArm7 + Allegro hand v4 (right)")


def _urdf(links, joints, name: str, title: str) -> str:
    out = ['<?xml version="1.0"?>',
           f"<!-- {title}, written by robot_runtime.description.build"
           " from published kinematic parameters. Do not edit by hand. -->",
           f'<robot name="{name}">']
    for link in links:
        out.append(f"  <link name={quoteattr(link.name)}>")
        if link.mass > 0:
            I = link.inertia
            out.append(f'    <inertial><origin xyz="{_f(link.com)}" rpy="0 0 0"/><mass value="{link.mass:.6g}"/>'
                       f'<inertia ixx="{I[0,0]:.6g}" ixy="{I[0,1]:.6g}" ixz="{I[0,2]:.6g}" '
                       f'iyy="{I[1,1]:.6g}" iyz="{I[1,2]:.6g}" izz="{I[2,2]:.6g}"/></inertial>')
        for g in link.geoms:
            rpy = mat_to_rpy(g.rotation())
            if g.kind == "box":
                shape = f'<box size="{_f(g.size)}"/>'
            elif g.kind == "cylinder":
                shape = f'<cylinder radius="{g.size[0]:.6g}" length="{g.size[1]:.6g}"/>'
            else:
                shape = f'<sphere radius="{g.size[0]:.6g}"/>'
            for tag in ("visual", "collision"):
                out.append(f'    <{tag}><origin xyz="{_f(g.pos)}" rpy="{_f(rpy)}"/><geometry>{shape}</geometry></{tag}>')
        out.append("  </link>")
    for j in joints:
        out.append(f"  <joint name={quoteattr(j.name)} type={quoteattr(j.kind)}>")
        out.append(f'    <parent link="{j.parent}"/><child link="{j.child}"/>')
        out.append(f'    <origin xyz="{_f(j.xyz)}" rpy="{_f(mat_to_rpy(j.R))}"/>')
        if j.kind == "revolute":
            out.append(f'    <axis xyz="{_f(j.axis)}"/>')
            out.append(f'    <limit lower="{j.limit[0]:.6g}" upper="{j.limit[1]:.6g}" effort="50" velocity="3.14"/>')
        out.append("  </joint>")
    out.append("</robot>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ MJCF

#: Arm servo: position actuators (N m / rad, N m s / rad) standing in for the xArm's own servo loop.
ARM_KP = 4000.0
ARM_KV = 250.0


def mjcf_parts(mount_xyz=D.DEFAULT_MOUNT_XYZ, mount_rpy=D.DEFAULT_MOUNT_RPY,
               hand_torque_limit: float = 0.7) -> dict[str, str]:
    """The robot's MJCF pieces: ``default``, ``body`` (the tree under worldbody), ``actuator``.

    Robot geoms have contype 2 / conaffinity 1: they touch the world and objects, not
    each other (self-collision is the safety shield's job, not the twin's).
    """
    links, joints = robot_tree(mount_xyz, mount_rpy)
    by_name = {link.name: link for link in links}
    children: dict[str, list[Joint]] = {}
    for j in joints:
        children.setdefault(j.parent, []).append(j)

    def body_xml(link: Link, indent: str, joint: Joint | None) -> list[str]:
        lines = []
        attrs = f"name={quoteattr(link.name)}"
        if joint is not None:
            attrs += f' pos="{_f(joint.xyz)}" quat="{_f(mat_to_quat(joint.R))}"'
        arm_or_palm = link.name.startswith("link") and not link.name.startswith("link_") or link.name == "palm"
        if arm_or_palm:
            attrs += ' gravcomp="1"'
        lines.append(f"{indent}<body {attrs}>")
        if joint is not None and joint.kind == "revolute":
            cls = "arm" if joint.name in D.ARM_JOINTS else "hand"
            lines.append(f'{indent}  <joint name={quoteattr(joint.name)} class="{cls}" axis="{_f(joint.axis)}" '
                         f'range="{joint.limit[0]:.6g} {joint.limit[1]:.6g}"/>')
        if link.mass > 0:
            I = link.inertia
            lines.append(f'{indent}  <inertial pos="{_f(link.com)}" mass="{link.mass:.6g}" '
                         f'fullinertia="{I[0,0]:.6g} {I[1,1]:.6g} {I[2,2]:.6g} {I[0,1]:.6g} {I[0,2]:.6g} {I[1,2]:.6g}"/>')
        for g in link.geoms:
            q = _f(mat_to_quat(g.rotation()))
            if g.kind == "box":
                lines.append(f'{indent}  <geom type="box" size="{_f(np.asarray(g.size) / 2)}" pos="{_f(g.pos)}" quat="{q}"/>')
            elif g.kind == "cylinder":
                lines.append(f'{indent}  <geom type="cylinder" size="{g.size[0]:.6g} {g.size[1] / 2:.6g}" '
                             f'pos="{_f(g.pos)}" quat="{q}"/>')
            else:
                lines.append(f'{indent}  <geom type="sphere" size="{g.size[0]:.6g}" pos="{_f(g.pos)}" class="tip"/>')
        if link.name == D.FLANGE_FRAME or link.name in D.FINGERTIP_FRAMES:
            lines.append(f'{indent}  <site name={quoteattr(link.name)} size="0.005"/>')
        for cj in children.get(link.name, []):
            lines.extend(body_xml(by_name[cj.child], indent + "  ", cj))
        lines.append(f"{indent}</body>")
        return lines

    body = "\n".join(body_xml(by_name["link_base"], "    ", None))
    default = """    <default class="robot">
      <geom contype="2" conaffinity="1" density="0" rgba="0.82 0.82 0.84 1" friction="1.0 0.02 0.001"/>
      <default class="arm"><joint armature="0.1" damping="2.0"/></default>
      <default class="hand"><joint armature="0.0005" damping="0.02" frictionloss="0.002"/></default>
      <default class="tip"><geom rgba="0.15 0.15 0.15 1" friction="1.5 0.02 0.001" condim="4"/></default>
    </default>"""
    act = []
    for name in D.ARM_JOINTS:
        act.append(f'    <general name="{name}" joint="{name}" gaintype="fixed" biastype="affine" gainprm="{ARM_KP}" biasprm="0 -{ARM_KP} -{ARM_KV}" '
                   f'ctrlrange="-6.2832 6.2832" forcerange="-60 60"/>')
    for name in D.HAND_JOINTS:
        act.append(f'    <motor name="{name}" joint="{name}" ctrlrange="-{hand_torque_limit:.6g} {hand_torque_limit:.6g}"/>')
    return {"default": default, "body": body, "actuator": "\n".join(act)}


def mjcf_text(mount_xyz=D.DEFAULT_MOUNT_XYZ, mount_rpy=D.DEFAULT_MOUNT_RPY, hand_torque_limit: float = 0.7) -> str:
    """The robot alone as a complete MJCF file (the twin's scene adds the lab cell around it)."""
    p = mjcf_parts(mount_xyz, mount_rpy, hand_torque_limit)
    body = p["body"].replace('<body name="link_base"', '<body name="link_base" childclass="robot"', 1)
    return f"""<!-- xArm7 + Allegro hand v4 (right), written by robot_runtime.description.build
     from published kinematic parameters. Do not edit by hand. -->
<mujoco model="xarm7_allegro">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast"/>
  <default>
{p["default"]}
  </default>
  <worldbody>
{body}
  </worldbody>
  <actuator>
{p["actuator"]}
  </actuator>
</mujoco>
"""


def write_packaged(out_dir=None) -> list[str]:
    """Write the packaged URDF and MJCF (default mount). Returns the paths written."""
    from pathlib import Path

    out = Path(out_dir) if out_dir else D.description_path(D.URDF_NAME).parent
    paths = [out / D.URDF_NAME, out / D.MJCF_NAME]
    paths[0].write_text(urdf_text())
    paths[1].write_text(mjcf_text())
    return [str(p) for p in paths]
