"""Forward kinematics and Jacobians from a URDF (numpy only, no ROS).

Used by the safety shield's workspace check, by IK for teleoperation and by the tests
that compare the URDF with the twin's MJCF.

Example::

    model = UrdfModel.from_file(description_path(URDF_NAME))
    T = model.link_pose(q, "index_tip")        # 4x4, metres, in the base frame
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime.errors import DescriptionError
from robot_runtime.transforms import make_T, rot_axis, rpy_to_mat


@dataclass(frozen=True)
class UrdfJoint:
    name: str
    kind: str
    parent: str
    child: str
    origin: np.ndarray  # 4x4
    axis: np.ndarray  # unit 3-vector in the joint frame
    lower: float
    upper: float


class UrdfModel:
    """A kinematic tree parsed from URDF text.

    ``joint_names`` are the movable joints in file order; ``q`` arrays follow that order.
    """

    def __init__(self, urdf_text: str, source: str = "<string>"):
        try:
            root = ET.fromstring(urdf_text)
        except ET.ParseError as exc:
            raise DescriptionError(f"{source}: not valid XML: {exc}") from exc
        if root.tag != "robot":
            raise DescriptionError(f"{source}: root element is <{root.tag}>, expected <robot>")
        self.links = [link.get("name") for link in root.findall("link")]
        joints = []
        for j in root.findall("joint"):
            o = j.find("origin")
            xyz = [float(v) for v in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()]
            rpy = [float(v) for v in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()]
            a = j.find("axis")
            axis = np.array([float(v) for v in (a.get("xyz") if a is not None else "1 0 0").split()])
            lim = j.find("limit")
            lower = float(lim.get("lower", "0")) if lim is not None else 0.0
            upper = float(lim.get("upper", "0")) if lim is not None else 0.0
            kind = j.get("type")
            if kind not in ("revolute", "fixed", "continuous"):
                raise DescriptionError(f"{source}: joint {j.get('name')!r} has unsupported type {kind!r}")
            joints.append(UrdfJoint(j.get("name"), kind, j.find("parent").get("link"), j.find("child").get("link"),
                                    make_T(rpy_to_mat(rpy), xyz), axis / np.linalg.norm(axis), lower, upper))
        children = {j.child for j in joints}
        roots = [link for link in self.links if link not in children]
        if len(roots) != 1:
            raise DescriptionError(f"{source}: expected one root link, found {roots}")
        self.root = roots[0]
        # Order joints parent-before-child so one pass computes every pose.
        by_parent: dict[str, list[UrdfJoint]] = {}
        for j in joints:
            by_parent.setdefault(j.parent, []).append(j)
        ordered, stack = [], [self.root]
        while stack:
            link = stack.pop(0)
            for j in by_parent.get(link, []):
                ordered.append(j)
                stack.append(j.child)
        self._joints = ordered
        self.joint_names: tuple[str, ...] = tuple(j.name for j in joints if j.kind != "fixed")
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self.limits = np.array([[j.lower, j.upper] for j in joints if j.kind != "fixed"])
        self._parent_joint = {j.child: j for j in joints}

    @classmethod
    def from_file(cls, path: str | Path) -> "UrdfModel":
        path = Path(path)
        if not path.is_file():
            raise DescriptionError(f"URDF file not found: {path}")
        return cls(path.read_text(), source=str(path))

    def _check_q(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"q has shape {q.shape}, expected ({len(self.joint_names)},) for joints {self.joint_names}")
        return q

    def forward(self, q) -> dict[str, np.ndarray]:
        """Poses (4x4, base frame) of every link for joint positions ``q`` [n] (rad)."""
        q = self._check_q(q)
        poses = {self.root: np.eye(4)}
        for j in self._joints:
            T = poses[j.parent] @ j.origin
            if j.kind != "fixed":
                T = T @ make_T(rot_axis(j.axis, q[self._index[j.name]]))
            poses[j.child] = T
        return poses

    def link_pose(self, q, link: str) -> np.ndarray:
        """Pose (4x4) of one link in the base frame."""
        if link not in self.links:
            raise DescriptionError(f"unknown link {link!r}")
        return self.forward(q)[link]

    def chain(self, link: str) -> list[UrdfJoint]:
        """Joints from the root to ``link``, root first."""
        out = []
        while link in self._parent_joint:
            j = self._parent_joint[link]
            out.append(j)
            link = j.parent
        return out[::-1]

    def jacobian(self, q, link: str, point=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Geometric Jacobian [6, n] of a point on ``link`` (in the link frame): rows vx vy vz wx wy wz."""
        q = self._check_q(q)
        poses = self.forward(q)
        T = poses[link]
        p = T[:3, :3] @ np.asarray(point, float) + T[:3, 3]
        J = np.zeros((6, len(self.joint_names)))
        for j in self.chain(link):
            if j.kind == "fixed":
                continue
            Tj = poses[j.parent] @ j.origin
            z = Tj[:3, :3] @ j.axis
            J[:3, self._index[j.name]] = np.cross(z, p - Tj[:3, 3])
            J[3:, self._index[j.name]] = z
        return J
