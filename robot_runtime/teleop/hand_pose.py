"""Human hand keypoints: the MediaPipe 21-point layout and the hand frame they define.

The hand frame matches the Allegro description's ``wrist`` frame, so finger vectors
expressed in it can be handed to the retargeter unchanged:

- origin at the wrist keypoint,
- z from the wrist toward the middle finger's knuckle (along the fingers),
- y across the palm toward the index finger (for a right hand),
- x = y × z, the palm normal: the side the fingers curl toward.

Positions are metres; keypoint arrays are [21, 3].
"""
from __future__ import annotations

import numpy as np

from robot_runtime.errors import TeleopError

NUM_KEYPOINTS = 21
WRIST = 0
THUMB_TIP, INDEX_TIP, MIDDLE_TIP, RING_TIP, PINKY_TIP = 4, 8, 12, 16, 20
INDEX_MCP, MIDDLE_MCP, RING_MCP, PINKY_MCP = 5, 9, 13, 17


def check_keypoints(kp, what: str = "keypoints") -> np.ndarray:
    """``kp`` as float [21, 3]; raises TeleopError naming ``what`` on a wrong shape or a non-finite value."""
    kp = np.asarray(kp, dtype=float)
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise TeleopError(f"{what}: shape {kp.shape}, expected ({NUM_KEYPOINTS}, 3)")
    if not np.all(np.isfinite(kp)):
        raise TeleopError(f"{what}: non-finite value")
    return kp


def hand_frame(kp, left: bool = False) -> np.ndarray:
    """Pose (4x4) of the hand frame in the keypoints' frame.

    For a left hand the y axis is mirrored, so that a left hand drives the right Allegro
    hand as its mirror image.

    Raises:
        TeleopError: degenerate keypoints (wrist on the knuckles, or knuckles in a line).
    """
    kp = check_keypoints(kp)
    z = kp[MIDDLE_MCP] - kp[WRIST]
    nz = np.linalg.norm(z)
    across = kp[INDEX_MCP] - kp[PINKY_MCP]
    if left:
        across = -across
    y = across - z * (across @ z) / max(nz * nz, 1e-12)
    ny = np.linalg.norm(y)
    if nz < 1e-4 or ny < 1e-4:
        raise TeleopError("degenerate hand keypoints: cannot define the hand frame")
    z, y = z / nz, y / ny
    T = np.eye(4)
    T[:3, :3] = np.column_stack([np.cross(y, z), y, z])
    T[:3, 3] = kp[WRIST]
    return T


def in_hand_frame(kp, T_hand: np.ndarray) -> np.ndarray:
    """Keypoints [21, 3] expressed in the hand frame ``T_hand`` (4x4 in the keypoints' frame)."""
    kp = check_keypoints(kp)
    return (kp - T_hand[:3, 3]) @ T_hand[:3, :3]
