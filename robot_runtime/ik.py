"""Damped-least-squares inverse kinematics on the URDF model, respecting joint limits."""
from __future__ import annotations

import numpy as np

from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import rot_log


def _rot_error(R_cur: np.ndarray, R_goal: np.ndarray) -> np.ndarray:
    """Axis-angle vector (base frame, rad) rotating R_cur onto R_goal."""
    return rot_log(R_goal @ R_cur.T)


def solve_ik(model: UrdfModel, q0, link: str, target: np.ndarray, joints: np.ndarray,
             iters: int = 100, damping: float = 0.05, rot_weight: float = 0.3,
             tol_pos: float = 1e-4, tol_rot: float = 1e-3, q_rest=None,
             rest_gain: float = 0.2) -> tuple[np.ndarray, float, float]:
    """Move ``link`` to the 4x4 ``target`` by changing only the indices ``joints`` of q.

    ``q_rest`` (full q, rad): on a redundant chain, each iteration also pulls the joints toward
    it by ``rest_gain`` of the gap, projected into the task Jacobian's null space (the pose is
    not disturbed), so the solver settles on the solution nearest that posture instead of
    wherever the iterations drift on the self-motion manifold.

    Returns (q, position error m, rotation error rad). Joint limits are enforced at
    every iteration.
    """
    q = np.array(q0, dtype=float)
    lo, hi = model.limits[joints, 0], model.limits[joints, 1]
    W = np.diag([1, 1, 1, rot_weight, rot_weight, rot_weight])
    rest = None if q_rest is None else np.asarray(q_rest, float)[joints]
    for _ in range(iters):
        T = model.link_pose(q, link)
        e = np.concatenate([target[:3, 3] - T[:3, 3], _rot_error(T[:3, :3], target[:3, :3])])
        done = np.linalg.norm(e[:3]) < tol_pos and np.linalg.norm(e[3:]) < tol_rot
        if done and rest is None:
            break
        J = W @ model.jacobian(q, link)[:, joints]
        dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), W @ e)
        if rest is not None:
            pull = rest_gain * (rest - q[joints])
            if done and np.abs(pull).max() < 1e-3:
                break
            dq += pull - np.linalg.pinv(J) @ (J @ pull)
        q[joints] = np.clip(q[joints] + dq, lo, hi)
    T = model.link_pose(q, link)
    return q, float(np.linalg.norm(target[:3, 3] - T[:3, 3])), float(np.linalg.norm(_rot_error(T[:3, :3], target[:3, :3])))
