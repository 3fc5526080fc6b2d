"""Checking a camera calibration against the depth camera itself.

The robot model (the URDF's primitives, posed by forward kinematics of the measured joints)
is drawn into the depth camera through the calibration under test: points sampled over every
primitive's surface are projected with K and kept nearest-first per pixel, giving the depth
the robot *should* have at each pixel it covers. Where the calibration is right, the
measured depth agrees there; where it is off, the predicted robot lands on the table or the
background and the residual grows. One number sums it up: the median absolute depth residual
over the robot's predicted pixels (those with a valid measurement).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime.description.geometry import RobotPrimitives, VisualGeom


def _surface_points(g: VisualGeom, spacing: float) -> np.ndarray:
    """Points [M, 3] over the primitive's surface in its own frame, about ``spacing`` m apart."""
    if g.kind == "box":
        half = np.asarray(g.size) / 2
        pts = []
        for axis in range(3):
            a, b = [k for k in range(3) if k != axis]
            ua = np.linspace(-half[a], half[a], max(2, int(2 * half[a] / spacing) + 1))
            ub = np.linspace(-half[b], half[b], max(2, int(2 * half[b] / spacing) + 1))
            A, B = np.meshgrid(ua, ub)
            for sign in (-1, 1):
                p = np.zeros((A.size, 3))
                p[:, a], p[:, b], p[:, axis] = A.ravel(), B.ravel(), sign * half[axis]
                pts.append(p)
        return np.concatenate(pts)
    if g.kind == "cylinder":
        r, length = g.size
        n_a = max(8, int(2 * np.pi * r / spacing))
        n_z = max(2, int(length / spacing) + 1)
        ang = np.linspace(0, 2 * np.pi, n_a, endpoint=False)
        z = np.linspace(-length / 2, length / 2, n_z)
        A, Z = np.meshgrid(ang, z)
        side = np.column_stack([r * np.cos(A.ravel()), r * np.sin(A.ravel()), Z.ravel()])
        rr = np.linspace(0, r, max(2, int(r / spacing) + 1))
        RR, AA = np.meshgrid(rr, ang)
        disc = np.column_stack([RR.ravel() * np.cos(AA.ravel()), RR.ravel() * np.sin(AA.ravel())])
        caps = [np.column_stack([disc, np.full(len(disc), s * length / 2)]) for s in (-1, 1)]
        return np.concatenate([side, *caps])
    r = g.size[0]
    n = max(20, int(4 * np.pi * r * r / spacing ** 2))
    k = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * k / n)
    theta = np.pi * (1 + 5 ** 0.5) * k
    return r * np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


class RobotDepthModel:
    """Predicts the depth image of the robot alone for joints ``q``, a camera pose and intrinsics.

    Args:
        robot: the robot's kinematics and primitives (default: the packaged URDF's).
        spacing: surface sampling (m); keep it under one pixel's footprint at the robot's range.
    """

    def __init__(self, robot: RobotPrimitives | None = None, spacing: float = 0.0025):
        robot = robot or RobotPrimitives()
        self.model, self.order = robot.model, robot.order
        pts, slots = [], []
        for g in robot.visuals:
            p = _surface_points(g, spacing) @ g.origin[:3, :3].T + g.origin[:3, 3]
            pts.append(p)
            slots.append(np.full(len(p), self.model.link_slot(g.link)))
        self.points = np.concatenate(pts)
        self.slots = np.concatenate(slots)

    def render(self, q, K, T_base_camera, shape: tuple[int, int]) -> np.ndarray:
        """Depth [H, W] float32 (m along the optical axis) of the robot at joints ``q`` [23] (rad,
        driver order); NaN where it is not."""
        links = self.model.forward_array(np.asarray(q, float)[self.order])
        T = links[self.slots]
        p_base = np.einsum("nij,nj->ni", T[:, :3, :3], self.points) + T[:, :3, 3]
        Tc = np.linalg.inv(np.asarray(T_base_camera, float))
        p = p_base @ Tc[:3, :3].T + Tc[:3, 3]
        z = p[:, 2]
        ok = z > 0.05
        K = np.asarray(K, float)
        u = np.floor(K[0, 0] * p[ok, 0] / z[ok] + K[0, 2]).astype(int)
        v = np.floor(K[1, 1] * p[ok, 1] / z[ok] + K[1, 2]).astype(int)
        zz = z[ok]
        h, w = shape
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        flat = np.full(h * w, np.inf)
        np.minimum.at(flat, v[inside] * w + u[inside], zz[inside])
        out = flat.reshape(h, w).astype(np.float32)
        out[~np.isfinite(out)] = np.nan
        return out


@dataclass
class DepthCheck:
    """The residual map [H, W] (measured - predicted, m; NaN off the robot), the predicted robot
    depth, and the summary: median absolute residual over robot pixels (m) and their count."""

    residual: np.ndarray
    predicted: np.ndarray
    median_abs_m: float
    robot_pixels: int

    def to_dict(self) -> dict:
        return {"median_depth_residual_mm": round(self.median_abs_m * 1e3, 2), "robot_pixels": self.robot_pixels}


def check_depth(depth: np.ndarray, q, K, T_base_camera, robot: RobotDepthModel) -> DepthCheck:
    """Compare a measured depth image [H, W] (m, NaN = none) with the robot predicted through the
    calibration ``T_base_camera`` at measured joints ``q`` [23] (rad, driver order)."""
    depth = np.asarray(depth, np.float32)
    pred = robot.render(q, K, T_base_camera, depth.shape)
    both = np.isfinite(pred) & np.isfinite(depth)
    res = np.full(depth.shape, np.nan, np.float32)
    res[both] = depth[both] - pred[both]
    med = float(np.median(np.abs(res[both]))) if both.any() else float("inf")
    return DepthCheck(res, pred, med, int(both.sum()))


def save_check_png(path, depth: np.ndarray, check: DepthCheck, title: str = "") -> Path:
    """A picture of the check: the measured depth with the predicted robot outlined, and the
    residual map (+-3 cm), the median in the title."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    im0 = ax[0].imshow(depth, cmap="viridis")
    ax[0].contour(np.isfinite(check.predicted).astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax[0].set_title("measured depth (m), predicted robot outlined")
    fig.colorbar(im0, ax=ax[0], fraction=0.046)
    im1 = ax[1].imshow(check.residual * 1e3, cmap="coolwarm", vmin=-30, vmax=30)
    ax[1].set_title(f"depth residual on robot pixels (mm): median |r| {check.median_abs_m * 1e3:.1f} mm")
    fig.colorbar(im1, ax=ax[1], fraction=0.046)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
