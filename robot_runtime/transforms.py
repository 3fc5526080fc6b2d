"""Small rigid-transform helpers (numpy). Quaternions are (w, x, y, z); angles in rad."""
from __future__ import annotations

import numpy as np


def rot_x(a: float) -> np.ndarray:
    """3x3 rotation about x by ``a`` rad."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_axis(axis, a: float) -> np.ndarray:
    """3x3 rotation about the unit vector ``axis`` by ``a`` rad (Rodrigues)."""
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(a) * K + (1.0 - np.cos(a)) * (K @ K)


def rpy_to_mat(rpy) -> np.ndarray:
    """URDF roll-pitch-yaw (fixed axes x, y, z) to a 3x3 rotation: R = Rz(y) Ry(p) Rx(r)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def mat_to_rpy(R) -> np.ndarray:
    """Inverse of :func:`rpy_to_mat` (pitch in [-pi/2, pi/2])."""
    R = np.asarray(R)
    p = np.arcsin(np.clip(-R[2, 0], -1.0, 1.0))
    if abs(np.cos(p)) > 1e-9:
        r = np.arctan2(R[2, 1], R[2, 2])
        y = np.arctan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: put everything in yaw
        r = 0.0
        y = np.arctan2(-R[0, 1], R[1, 1])
    return np.array([r, p, y])


def quat_to_mat(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) to a 3x3 rotation."""
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def mat_to_quat(R) -> np.ndarray:
    """3x3 rotation to a unit quaternion (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=float)
    t = np.trace(R)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k]) * 2
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def make_T(R=None, p=None) -> np.ndarray:
    """4x4 homogeneous transform from a rotation and a translation."""
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    if p is not None:
        T[:3, 3] = p
    return T


def look_at_axes(position, target, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera axes for a camera at ``position`` looking at ``target``.

    Returns (right, up, forward) unit vectors in the parent frame: the MuJoCo camera's
    x and y axes are (right, up) and it looks along -z = forward.
    """
    f = np.asarray(target, float) - np.asarray(position, float)
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, float))
    if np.linalg.norm(r) < 1e-9:
        r = np.cross(f, np.array([0.0, 1.0, 0.0]))
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    return r, u, f


def optical_pose_look_at(position, target) -> np.ndarray:
    """4x4 pose of a camera's optical frame (x right, y down, z forward) at ``position`` looking at ``target``."""
    right, up, fwd = look_at_axes(position, target)
    return make_T(np.column_stack([right, -up, fwd]), position)


def rot_log(R) -> np.ndarray:
    """Rotation vector (axis * angle, rad) of the rotation matrix ``R`` [3, 3]."""
    R = np.asarray(R, dtype=float)
    angle = np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))
    if angle < 1e-9:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    n = np.linalg.norm(axis)
    if n < 1e-9:  # angle near pi: pick the largest diagonal axis
        axis = np.sqrt(np.maximum((np.diag(R) + 1) / 2, 0))
        n = np.linalg.norm(axis)
    return axis / n * angle


def rot_exp(v) -> np.ndarray:
    """Rotation matrix of the rotation vector ``v`` [3] (rad)."""
    v = np.asarray(v, dtype=float)
    a = float(np.linalg.norm(v))
    return np.eye(3) if a < 1e-12 else rot_axis(v / a, a)
