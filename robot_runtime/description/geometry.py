"""The robot's visual geometry from the URDF: primitives (box, cylinder, sphere) per link.

The kinematics (:class:`robot_runtime.kinematics.UrdfModel`) poses the links; this module
says what each link looks like, in the link's own frame. The Rerun logger draws it, the
perception's robot filter removes the robot from the cloud with it, and the calibration
check projects it onto the depth image.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime import description as D
from robot_runtime.errors import DescriptionError
from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import make_T, rpy_to_mat


@dataclass(frozen=True)
class VisualGeom:
    """One primitive of a link.

    ``kind`` is 'box' (``size`` = full edge lengths x, y, z, m), 'cylinder' (``size`` = radius,
    length along the local z axis, m) or 'sphere' (``size`` = radius, m); ``origin`` [4, 4] is
    its pose in the link frame.
    """

    link: str
    kind: str
    size: tuple[float, ...]
    origin: np.ndarray


def urdf_visuals(urdf_text: str, source: str = "<string>") -> list[VisualGeom]:
    """Every ``<visual>`` primitive of a URDF, in file order.

    Raises:
        DescriptionError: not valid XML, or a visual with no geometry or an unsupported one
            (meshes are not part of this robot's description).
    """
    try:
        root = ET.fromstring(urdf_text)
    except ET.ParseError as exc:
        raise DescriptionError(f"{source}: not valid XML: {exc}") from exc
    out = []
    for link in root.findall("link"):
        for vis in link.findall("visual"):
            o = vis.find("origin")
            xyz = [float(v) for v in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()]
            rpy = [float(v) for v in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()]
            geom = vis.find("geometry")
            shape = None if geom is None or len(geom) == 0 else geom[0]
            if shape is None:
                raise DescriptionError(f"{source}: link {link.get('name')!r} has a visual without geometry")
            if shape.tag == "box":
                size = tuple(float(v) for v in shape.get("size").split())
            elif shape.tag == "cylinder":
                size = (float(shape.get("radius")), float(shape.get("length")))
            elif shape.tag == "sphere":
                size = (float(shape.get("radius")),)
            else:
                raise DescriptionError(f"{source}: link {link.get('name')!r} has an unsupported visual <{shape.tag}>")
            out.append(VisualGeom(link.get("name"), shape.tag, size, make_T(rpy_to_mat(rpy), xyz)))
    return out


def load_visuals(path) -> list[VisualGeom]:
    path = Path(path)
    if not path.is_file():
        raise DescriptionError(f"URDF file not found: {path}")
    return urdf_visuals(path.read_text(), str(path))


class RobotPrimitives:
    """The robot's primitives batched by kind, posed from joints given in ``joint_names`` order.

    :meth:`posed` returns ``{kind: (T [G, 4, 4] each primitive's pose in the base frame,
    sizes [G, k])}`` for the kinds present, slices of :meth:`poses` (every primitive at once: one
    forward-kinematics pass and one batched product).

    Args:
        urdf_path: the description (default: the packaged xArm7 + Allegro URDF).
        joint_names: the order of the joints in every ``q`` given (default: the drivers' order).
    """

    def __init__(self, urdf_path=None, joint_names=D.ALL_JOINTS):
        path = Path(urdf_path) if urdf_path else D.description_path(D.URDF_NAME)
        self.model = UrdfModel.from_file(path)
        self.visuals = load_visuals(path)
        names = tuple(joint_names)
        self.order = np.array([names.index(n) for n in self.model.joint_names])
        self.batches = {}
        for kind in ("box", "cylinder", "sphere"):
            gs = [g for g in self.visuals if g.kind == kind]
            if gs:
                self.batches[kind] = (np.array([self.model.link_slot(g.link) for g in gs]),
                                      np.stack([g.origin for g in gs]), np.array([g.size for g in gs]))
        kinds = list(self.batches)
        self._slots = np.concatenate([self.batches[k][0] for k in kinds]) if kinds else np.zeros(0, int)
        self._origins = np.concatenate([self.batches[k][1] for k in kinds]) if kinds else np.zeros((0, 4, 4))
        self._spans = dict(zip(kinds, np.cumsum([0] + [len(self.batches[k][0]) for k in kinds]).tolist()))

    def poses(self, q) -> np.ndarray:
        """Every primitive's pose in the base frame [G, 4, 4], the kinds of :attr:`batches` one after
        the other in their order (one forward-kinematics pass, one batched product)."""
        links = self.model.forward_array(np.asarray(q, float)[self.order])
        return links[self._slots] @ self._origins

    def posed(self, q) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        T = self.poses(q)
        return {kind: (T[self._spans[kind]:self._spans[kind] + len(sizes)], sizes)
                for kind, (_, _, sizes) in self.batches.items()}
