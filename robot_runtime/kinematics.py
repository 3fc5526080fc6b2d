"""Forward kinematics and Jacobians of the robot's URDF, on pinocchio (no ROS).

Used by the safety shield's workspace check, by IK for teleoperation and by the tests
that compare the URDF with the twin's MJCF.

Example::

    model = UrdfModel.from_file(description_path(URDF_NAME))
    T = model.link_pose(q, "index_tip")        # 4x4, metres, in the base frame
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from robot_runtime.errors import DescriptionError


class UrdfModel:
    """The robot's kinematic tree, from URDF text, on pinocchio (fixed base).

    ``joint_names`` are the movable joints in ``joint_order`` (default: the robot's joint order
    ``description.ALL_JOINTS`` for the robot's joints, as for the hand-only URDF, else
    pinocchio's depth-first order); ``q`` arrays and Jacobian columns follow it. ``links``
    are the URDF's links, root first. ``limits`` [n, 2] are the joints' (lower, upper) (rad).
    One instance may be called from several threads (calls take turns on its pinocchio data).
    """

    def __init__(self, urdf_text: str, source: str = "<string>", joint_order=None):
        from robot_runtime import description as D  # noqa: PLC0415
        import pinocchio as pin  # noqa: PLC0415 - the one kinematics library

        self._pin = pin
        if "<robot" not in urdf_text:
            raise DescriptionError(f"{source}: not a URDF (no <robot> element)")
        try:
            self.model = pin.buildModelFromXML(urdf_text)
        except (ValueError, RuntimeError) as exc:
            raise DescriptionError(f"{source}: not a valid URDF (pinocchio: {exc})") from exc
        m = self.model
        if m.nq != m.nv:
            kinds = {m.names[j]: m.joints[j].shortname() for j in range(1, m.njoints) if m.joints[j].nq != 1}
            raise DescriptionError(f"{source}: only revolute and fixed joints are supported, found {kinds}")
        self._data = m.createData()
        self._lock = threading.Lock()
        tree_order = tuple(m.names[j] for j in range(1, m.njoints))
        if joint_order is None:   # the robot's order (or the hand's, the arm's): else the tree's
            joint_order = ([n for n in D.ALL_JOINTS if n in tree_order] if set(tree_order) <= set(D.ALL_JOINTS)
                           else tree_order)
        if sorted(joint_order) != sorted(tree_order):
            raise DescriptionError(f"{source}: joint order {list(joint_order)} does not name the URDF's movable "
                                   f"joints {list(tree_order)}")
        self.joint_names: tuple[str, ...] = tuple(joint_order)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        #: for each joint of ``joint_names``, its slot in pinocchio's q (and Jacobian column)
        self._pin_q = np.array([m.joints[m.getJointId(n)].idx_q for n in self.joint_names])
        self._from_pin = np.argsort(self._pin_q)   # pinocchio's q = q.take(_from_pin)
        self._q_shape = (len(self.joint_names),)
        self._q_buf = np.zeros(m.nq)
        self.limits = np.column_stack([m.lowerPositionLimit, m.upperPositionLimit])[self._pin_q]
        body = [f for f in m.frames if f.type == pin.FrameType.BODY]
        self.links: list[str] = [f.name for f in body]
        if not self.links:
            raise DescriptionError(f"{source}: no links")
        self.root = self.links[0]
        self._frame = {f.name: m.getFrameId(f.name, pin.FrameType.BODY) for f in body}
        self._link_slot = {name: i for i, name in enumerate(self.links)}
        self._frame_ids = [self._frame[n] for n in self.links]

    @classmethod
    def from_file(cls, path: str | Path) -> "UrdfModel":
        path = Path(path)
        if not path.is_file():
            raise DescriptionError(f"URDF file not found: {path}")
        return cls(path.read_text(), source=str(path))

    def _check_q(self, q) -> np.ndarray:
        """``q`` in ``joint_names``' order -> pinocchio's q."""
        q = np.asarray(q, dtype=float)
        if q.shape != self._q_shape:
            raise ValueError(f"q has shape {q.shape}, expected ({len(self.joint_names)},) for joints {self.joint_names}")
        return q.take(self._from_pin)

    def _frame_id(self, link: str) -> int:
        if link not in self._frame:
            raise DescriptionError(f"unknown link {link!r}")
        return self._frame[link]

    def forward(self, q) -> dict[str, np.ndarray]:
        """Poses (4x4, base frame) of every link for joint positions ``q`` [n] (rad)."""
        T = self.forward_array(q)
        return {link: T[slot] for link, slot in self._link_slot.items()}

    def forward_array(self, q) -> np.ndarray:
        """Poses [L, 4, 4] of every link, indexed by :meth:`link_slot`."""
        q = self._check_q(q)
        pin = self._pin
        with self._lock:
            pin.framesForwardKinematics(self.model, self._data, q)
            oMf = self._data.oMf
            return np.stack([oMf[i].homogeneous for i in self._frame_ids])

    def link_slot(self, link: str) -> int:
        """Index of ``link`` in :meth:`forward_array`'s output."""
        if link not in self._link_slot:
            raise DescriptionError(f"unknown link {link!r}")
        return self._link_slot[link]

    def link_pose(self, q, link: str) -> np.ndarray:
        """Pose (4x4) of one link in the base frame."""
        fid = self._frame_id(link)
        q = self._check_q(q)
        pin = self._pin
        with self._lock:
            pin.forwardKinematics(self.model, self._data, q)
            return pin.updateFramePlacement(self.model, self._data, fid).homogeneous

    def frame_ids(self, links) -> list[int]:
        """The model's frame ids of the named links (for :meth:`positions`)."""
        return [self._frame_id(name) for name in links]

    def positions_function(self, frame_ids, pieces=None):
        """A function of ``q`` -> the origins (m, base frame) of the links with these
        :meth:`frame_ids`, specialised for a hot path (the shield's, at 120 and 300 Hz).

        ``pieces``: the sizes of consecutive pieces of ``q`` (in ``joint_names``' order) the
        function takes as separate arguments, e.g. ``(7, 16)`` for ``f(q_arm, q_hand)``; they are
        copied into the model's q without a concatenation. NaN in q gives NaN positions.
        """
        pieces = tuple(pieces or (len(self.joint_names),))
        if sum(pieces) != len(self.joint_names):
            raise ValueError(f"pieces {pieces} do not add up to the {len(self.joint_names)} joints")
        edges = np.cumsum((0,) + pieces)
        slots = [self._pin_q[a:b] for a, b in zip(edges[:-1], edges[1:])]
        fk, place = self._pin.forwardKinematics, self._pin.updateFramePlacement
        m, d, lock, buf, ids = self.model, self._data, self._lock, self._q_buf, list(frame_ids)

        def positions(*parts) -> list[np.ndarray]:
            with lock:
                for slot, part in zip(slots, parts):
                    buf[slot] = part
                fk(m, d, buf)
                return [place(m, d, i).translation.copy() for i in ids]
        return positions

    def jacobian(self, q, link: str, point=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Geometric Jacobian [6, n] of a point on ``link`` (in the link frame): rows vx vy vz wx wy wz,
        in the base frame."""
        fid = self._frame_id(link)
        q = self._check_q(q)
        pin = self._pin
        with self._lock:
            J = pin.computeFrameJacobian(self.model, self._data, q, fid, pin.LOCAL_WORLD_ALIGNED)
            R = self._data.oMf[fid].rotation
        r = R @ np.asarray(point, float)
        if np.any(r):   # the point's velocity: v + w x r = v - [r]x w
            J[:3] -= np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]]) @ J[3:]
        return J[:, self._pin_q]
