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
from robot_runtime.transforms import make_T, rpy_to_mat


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
        # Precomputed for a batched forward pass: each joint's origin, and the Rodrigues
        # terms (K, K^2) of its axis, so all joint rotations are built in one numpy call.
        self._origins = np.stack([j.origin for j in ordered]) if ordered else np.zeros((0, 4, 4))
        moving = [j.kind != "fixed" for j in ordered]
        self._q_index = np.array([self._index[j.name] if m else 0 for j, m in zip(ordered, moving)], dtype=int)
        self._moving = np.array(moving, dtype=bool)
        K = np.zeros((len(ordered), 3, 3))
        for i, j in enumerate(ordered):
            k = j.axis
            K[i] = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]]
        self._K, self._K2 = K, K @ K
        self._link_slot = {self.root: 0, **{j.child: i + 1 for i, j in enumerate(ordered)}}
        self._parent_slot = np.array([self._link_slot[j.parent] for j in ordered], dtype=int)

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
        T = self.forward_array(q)
        return {link: T[slot] for link, slot in self._link_slot.items()}

    def forward_array(self, q) -> np.ndarray:
        """Poses [L, 4, 4] of every link, indexed by :meth:`link_slot` (batched: about 50 us)."""
        q = self._check_q(q)
        angles = np.where(self._moving, q[self._q_index], 0.0)[:, None, None]
        local = self._origins.copy()
        R = np.eye(3) + np.sin(angles) * self._K + (1.0 - np.cos(angles)) * self._K2
        local[:, :3, :3] = self._origins[:, :3, :3] @ R
        out = np.empty((len(local) + 1, 4, 4))
        out[0] = np.eye(4)
        for i, parent in enumerate(self._parent_slot):
            out[i + 1] = out[parent] @ local[i]
        return out

    def link_slot(self, link: str) -> int:
        """Index of ``link`` in :meth:`forward_array`'s output."""
        if link not in self._link_slot:
            raise DescriptionError(f"unknown link {link!r}")
        return self._link_slot[link]

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
