"""The robot description: xArm7 with a right Allegro hand (v4) mounted on its flange.

Joint names, order and limits here are the single source for the URDF, the MJCF, the
config defaults and (later) the policy's joint mapping. Angles in rad, lengths in m.

Order of the 23 joints: the 7 arm joints ``joint1..joint7``, then the 16 Allegro joints in
the driver's order ``joint_0.0..joint_15.0`` (index 0-3, middle 4-7, ring 8-11, thumb 12-15).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

ARM_JOINTS: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))
HAND_JOINTS: tuple[str, ...] = tuple(f"joint_{i}.0" for i in range(16))
ALL_JOINTS: tuple[str, ...] = ARM_JOINTS + HAND_JOINTS

#: xArm7 joint limits (rad), published values.
ARM_LIMITS: tuple[tuple[float, float], ...] = (
    (-6.2832, 6.2832), (-2.059, 2.0944), (-6.2832, 6.2832), (-0.19198, 3.927),
    (-6.2832, 6.2832), (-1.69297, 3.14159), (-6.2832, 6.2832),
)
_FINGER_LIMITS = ((-0.47, 0.47), (-0.196, 1.61), (-0.174, 1.709), (-0.227, 1.618))
_THUMB_LIMITS = ((0.263, 1.396), (-0.105, 1.163), (-0.189, 1.644), (-0.162, 1.719))
#: Allegro v4 joint limits (rad), in the driver's order (index, middle, ring, thumb).
HAND_LIMITS: tuple[tuple[float, float], ...] = _FINGER_LIMITS * 3 + _THUMB_LIMITS
ALL_LIMITS = ARM_LIMITS + HAND_LIMITS

#: Home pose used by several public xArm7 models (rad).
ARM_HOME: tuple[float, ...] = (0.0, -0.247, 0.0, 0.909, 0.0, 1.156, 0.0)
#: Open hand, thumb slightly rotated in (rad).
HAND_HOME: tuple[float, ...] = (0.0,) * 12 + (0.5, 0.0, 0.0, 0.0)

#: Default hand mount: palm frame in the flange frame. The palm block ends about 0.095 m
#: behind the palm frame, so the palm frame sits 0.1 m out along the flange's +z.
DEFAULT_MOUNT_XYZ = (0.0, 0.0, 0.1)
DEFAULT_MOUNT_RPY = (0.0, 0.0, 0.0)

FINGERS: tuple[str, ...] = ("index", "middle", "ring", "thumb")
#: Frames whose positions the workspace checks and FK tests use.
FLANGE_FRAME = "flange"
FINGERTIP_FRAMES: tuple[str, ...] = tuple(f"{f}_tip" for f in FINGERS)

URDF_NAME = "xarm7_allegro.urdf"
MJCF_NAME = "xarm7_allegro.xml"


def description_path(name: str) -> Path:
    """Path of a packaged description file (``xarm7_allegro.urdf`` or ``.xml``)."""
    return Path(str(resources.files(__package__).joinpath(name)))
