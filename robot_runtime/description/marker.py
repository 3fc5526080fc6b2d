"""The hand-eye calibration marker: an ArUco marker on a plate on a bracket at the Allegro palm's side.

Part of the cell's description: the twin draws it on the hand and :mod:`calibration` detects it.

On the real hand the plate is printed and taped on; in the twin it is built from geoms
(a white plate and one black box per black cell), so the colour camera sees the same
pattern. The marker frame follows OpenCV's convention: origin at the marker's centre, x to
the right and y up as seen from the front, z out of the marker toward the viewer; corners
are listed top-left, top-right, bottom-right, bottom-left (``cv2.SOLVEPNP_IPPE_SQUARE``).

Hand-eye calibration solves for the marker's pose on the hand as well as the camera's, so
the mount below need not be exact on the real robot; the twin's is exact, and the tests
compare against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot_runtime.transforms import make_T, mat_to_quat

#: The marker's pose in the palm frame: parallel to the palm's -y face (the broad side away
#: from the thumb), on a bracket 4.5 cm off it so that neither the wrist (wider than the palm)
#: nor the ring finger hides it; x along palm x, y along palm z (toward the fingers), z out
#: (palm -y).
R_PALM_MARKER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
PALM_FACE_CENTER = np.array([-0.0093, -0.065, -0.05])   # the plate's back face centre in the palm frame (m)
PLATE_THICKNESS = 0.001
CELL_THICKNESS = 0.0006


@dataclass(frozen=True)
class MarkerSpec:
    """Which marker, how big. ``cell`` is one bit's edge (m); the black square is
    (bits + 2) cells across (a one-cell black border), on a plate with a one-cell white margin."""

    dictionary: str = "DICT_4X4_50"
    marker_id: int = 7
    cell: float = 0.011
    bits: int = 4
    link: str = "palm"
    R_link_marker: np.ndarray = field(default_factory=lambda: R_PALM_MARKER.copy())
    face_center: np.ndarray = field(default_factory=lambda: PALM_FACE_CENTER.copy())

    @property
    def size(self) -> float:
        """Edge of the black square (m): what solvePnP measures."""
        return self.cell * (self.bits + 2)

    @property
    def T_link_marker(self) -> np.ndarray:
        """The marker frame (on the cells' surface) in the link frame [4, 4]."""
        surface = self.face_center + self.R_link_marker[:, 2] * (PLATE_THICKNESS + CELL_THICKNESS)
        return make_T(self.R_link_marker, surface)

    def object_points(self) -> np.ndarray:
        """The four corners in the marker frame [4, 3] (m), in OpenCV's order."""
        h = self.size / 2
        return np.array([[-h, h, 0.0], [h, h, 0.0], [h, -h, 0.0], [-h, -h, 0.0]])


def aruco_dictionary(name: str):
    import cv2  # noqa: PLC0415 - only calibration needs OpenCV

    if not hasattr(cv2.aruco, name):
        raise ValueError(f"unknown ArUco dictionary {name!r}")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))


def marker_cells(spec: MarkerSpec) -> np.ndarray:
    """The marker's cells, border included, [bits + 2, bits + 2] bool (True = black), row 0 at the top."""
    import cv2  # noqa: PLC0415

    n = spec.bits + 2
    img = cv2.aruco.generateImageMarker(aruco_dictionary(spec.dictionary), spec.marker_id, n)
    return np.asarray(img) < 128


def marker_geoms_xml(spec: MarkerSpec) -> str:
    """MJCF geoms (in the link's body) drawing the marker: a white plate and one black box per black cell.
    They have no mass and touch nothing."""
    n = spec.bits + 2
    R = spec.R_link_marker
    quat = " ".join(f"{v:.9g}" for v in mat_to_quat(R))
    common = 'contype="0" conaffinity="0" mass="0"'
    plate_c = spec.face_center + R[:, 2] * (PLATE_THICKNESS / 2)
    half = spec.cell * (n + 2) / 2
    out = [f'<geom name="calib_plate" type="box" size="{half:.6g} {half:.6g} {PLATE_THICKNESS / 2:.6g}" '
           f'pos="{" ".join(f"{v:.6g}" for v in plate_c)}" quat="{quat}" rgba="1 1 1 1" {common}/>']
    cells = marker_cells(spec)
    for r in range(n):
        for c in range(n):
            if not cells[r, c]:
                continue
            local = np.array([(c - (n - 1) / 2) * spec.cell, ((n - 1) / 2 - r) * spec.cell,
                              PLATE_THICKNESS + CELL_THICKNESS / 2])
            p = spec.face_center + R @ local
            out.append(f'<geom name="calib_cell_{r}_{c}" type="box" size="{spec.cell / 2:.6g} {spec.cell / 2:.6g} '
                       f'{CELL_THICKNESS / 2:.6g}" pos="{" ".join(f"{v:.6g}" for v in p)}" quat="{quat}" '
                       f'rgba="0 0 0 1" {common}/>')
    return "\n".join(out)
