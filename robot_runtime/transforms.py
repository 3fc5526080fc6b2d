"""Rigid-transform helpers on transforms3d (Euler angles, quaternions, axis-angle) and
pinocchio (the rotation log and exp). Quaternions are (w, x, y, z); angles in rad."""
from __future__ import annotations

import numpy as np
import pinocchio as pin
from transforms3d import affines, axangles, euler, quaternions


def rot_x(a: float) -> np.ndarray:
    """3x3 rotation about x by ``a`` rad."""
    return axangles.axangle2mat((1.0, 0.0, 0.0), a, is_normalized=True)


def rot_axis(axis, a: float) -> np.ndarray:
    """3x3 rotation about ``axis`` (normalised here) by ``a`` rad."""
    return axangles.axangle2mat(axis, a)


def rpy_to_mat(rpy) -> np.ndarray:
    """URDF roll-pitch-yaw (fixed axes x, y, z) to a 3x3 rotation: R = Rz(y) Ry(p) Rx(r)."""
    r, p, y = rpy
    return euler.euler2mat(r, p, y, "sxyz")


def mat_to_rpy(R) -> np.ndarray:
    """Inverse of :func:`rpy_to_mat` (pitch in [-pi/2, pi/2])."""
    return np.array(euler.mat2euler(np.asarray(R, float), "sxyz"))


def quat_to_mat(q) -> np.ndarray:
    """Quaternion (w, x, y, z; normalised here) to a 3x3 rotation."""
    return quaternions.quat2mat(np.asarray(q, float))


def mat_to_quat(R) -> np.ndarray:
    """3x3 rotation to a unit quaternion (w, x, y, z) with w >= 0."""
    q = quaternions.mat2quat(np.asarray(R, float))
    return -q if q[0] < 0 else q


def make_T(R=None, p=None) -> np.ndarray:
    """4x4 homogeneous transform from a rotation [3, 3] and a translation [3] (m)."""
    return affines.compose(np.zeros(3) if p is None else p, np.eye(3) if R is None else R, np.ones(3))


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
    return pin.log3(np.asarray(R, dtype=float))


def rot_exp(v) -> np.ndarray:
    """Rotation matrix of the rotation vector ``v`` [3] (rad)."""
    return pin.exp3(np.asarray(v, dtype=float))
