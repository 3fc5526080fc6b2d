"""The safety shield: one pure module used by the arm and the hand controllers.

:func:`shield_step` takes the previous command and a desired position and returns the
command it lets through and every reason it intervened. It never mutates its inputs,
so what it returns is exactly what is sent and recorded. Order of checks:

1. non-finite desired values: the whole target is refused and the joints brake;
2. position limits shrunk by a margin;
3. velocity limit (rad/s) on the step from the previous command;
4. acceleration limit (rad/s^2) on the change of that velocity;
5. maximum step per tick (rad), which also bounds a late tick with a long ``dt``;
6. position limits again (a decelerating joint must still stop at the limit);
7. workspace (flange and fingertips above the table and inside a box, by forward
   kinematics) and Cartesian flange speed: a step that would take any point out of (or
   further out of) the workspace is refused (the joints hold), a step back in is allowed,
   and a step that is too fast in Cartesian space is scaled down.

Units: rad, rad/s, rad/s^2, m, m/s, s. Arrays are [n] for the n joints of one device.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

#: Intervention reasons, as counted and reported on /diagnostics.
REASONS = ("non_finite", "names", "position", "velocity", "acceleration", "step", "workspace", "tcp_speed",
           "torque", "stale_hold", "late_target", "future_target")


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits of one device (all arrays [n]).

    ``lower``/``upper`` are the published joint limits; commands stay ``margin`` inside them.
    """

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    margin: float
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    max_step: np.ndarray

    def __post_init__(self):
        n = len(self.names)
        for name in ("lower", "upper", "max_velocity", "max_acceleration", "max_step"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.ndim == 0:
                arr = np.full(n, float(arr))
            if arr.shape != (n,):
                raise ValueError(f"JointLimits.{name} has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)
        if np.any(self.upper - self.lower <= 2 * self.margin):
            raise ValueError("JointLimits.margin leaves no room between lower and upper")

    @property
    def safe_lower(self) -> np.ndarray:
        return self.lower + self.margin

    @property
    def safe_upper(self) -> np.ndarray:
        return self.upper - self.margin


@dataclass(frozen=True)
class Workspace:
    """Allowed region for the flange and fingertips (m, robot base frame).

    A point is inside when it is above ``table_z`` plus its clearance and inside the
    box ``box_min``..``box_max``.
    """

    table_z: float = 0.0
    flange_clearance: float = 0.05
    fingertip_clearance: float = 0.0
    box_min: tuple[float, float, float] = (-0.3, -0.8, -0.1)
    box_max: tuple[float, float, float] = (1.2, 0.8, 1.2)
    max_flange_speed: float = 0.5

    def depths(self, points: dict[str, np.ndarray]) -> dict[str, float]:
        """How far (m) each point is outside (0 inside)."""
        lo_box, hi_box = np.asarray(self.box_min, float), np.asarray(self.box_max, float)
        out = {}
        for name, p in points.items():
            clearance = self.flange_clearance if name == "flange" else self.fingertip_clearance
            lo = lo_box.copy()
            lo[2] = max(lo[2], self.table_z + clearance)
            # a point that is not finite (from a NaN joint) is nowhere: infinitely outside
            out[name] = float(max(np.max(lo - p), np.max(p - hi_box), 0.0)) if np.all(np.isfinite(p)) else math.inf
        return out

    def violation(self, points: dict[str, np.ndarray]) -> tuple[float, list[str]]:
        """How far (m) the worst point is outside, and the names of the points outside."""
        d = self.depths(points)
        outside = [n for n, v in d.items() if v > 0]
        return max(d.values(), default=0.0), outside


#: Maps a device's joint positions [n] to named points (m, base frame): "flange" and fingertips.
PointsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ShieldState:
    """The previous command: positions [n] (rad), velocities [n] (rad/s), its points (m)."""

    q: np.ndarray
    v: np.ndarray
    points: dict[str, np.ndarray] | None = None

    @classmethod
    def at_rest(cls, q, points_fn: PointsFn | None = None) -> "ShieldState":
        q = np.asarray(q, dtype=float).copy()
        return cls(q, np.zeros_like(q), points_fn(q) if points_fn else None)

    def held(self) -> "ShieldState":
        """The same positions, standing still."""
        return ShieldState(self.q, np.zeros_like(self.v), self.points)


@dataclass(frozen=True)
class ShieldResult:
    """What the shield let through (positions [n], velocities [n]) and why it intervened."""

    q: np.ndarray
    v: np.ndarray
    reasons: tuple[str, ...]
    points: dict[str, np.ndarray] | None = None
    detail: str = ""

    @property
    def state(self) -> ShieldState:
        return ShieldState(self.q, self.v, self.points)


def _changed(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.any(np.abs(a - b) > 1e-12))


def brake(limits: JointLimits, prev: ShieldState, dt: float, reason: str | None = "stale_hold",
          points_fn: PointsFn | None = None) -> ShieldResult:
    """Decelerate every joint at its acceleration limit until it stands still (hold).

    The result never moves a joint against its current motion, so holding never steps
    back; a joint at rest stays exactly where it is. ``reason`` is reported as the
    intervention (None: an expected hold, not an intervention).
    """
    speed = np.maximum(np.abs(prev.v) - limits.max_acceleration * dt, 0.0)
    step = np.clip(np.sign(prev.v) * speed * dt, -limits.max_step, limits.max_step)
    q = np.clip(prev.q + step, limits.safe_lower, limits.safe_upper)
    v = (q - prev.q) / dt if dt > 0 else np.zeros_like(q)
    points = points_fn(q) if points_fn and _changed(q, prev.q) else prev.points
    return ShieldResult(q, v, (reason,) if reason else (), points)


def shield_step(limits: JointLimits, prev: ShieldState, q_desired, dt: float,
                workspace: Workspace | None = None, points_fn: PointsFn | None = None) -> ShieldResult:
    """Filter one desired position [n] into a command, given the previous command.

    Args:
        limits: the device's joint limits.
        prev: the previous command (what was actually sent).
        q_desired: desired positions [n] (rad), in ``limits.names`` order.
        dt: time since the previous command (s, > 0).
        workspace, points_fn: when both are given, the workspace and flange-speed checks run.

    Returns:
        The command and the reasons it differs from ``q_desired`` (empty when untouched).
    """
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    q_des = np.asarray(q_desired, dtype=float)
    if q_des.shape != prev.q.shape:
        raise ValueError(f"desired positions have shape {q_des.shape}, expected {prev.q.shape}")
    if not np.all(np.isfinite(q_des)):
        return brake(limits, prev, dt, "non_finite", points_fn)
    reasons: list[str] = []
    q1 = np.clip(q_des, limits.safe_lower, limits.safe_upper)
    if _changed(q1, q_des):
        reasons.append("position")
    v_des = (q1 - prev.q) / dt
    v1 = np.clip(v_des, -limits.max_velocity, limits.max_velocity)
    if _changed(v1, v_des):
        reasons.append("velocity")
    dv = limits.max_acceleration * dt
    v2 = np.clip(v1, prev.v - dv, prev.v + dv)
    if _changed(v2, v1):
        reasons.append("acceleration")
    step = v2 * dt
    step_c = np.clip(step, -limits.max_step, limits.max_step)
    if _changed(step_c, step):
        reasons.append("step")
    q2 = prev.q + step_c
    q3 = np.clip(q2, limits.safe_lower, limits.safe_upper)
    if _changed(q3, q2) and "position" not in reasons:
        reasons.append("position")
    detail = ""
    points = None
    if workspace is not None and points_fn is not None:
        q3, points, extra, detail = _workspace_filter(workspace, prev, q3, dt, points_fn)
        reasons += extra
    return ShieldResult(q3, (q3 - prev.q) / dt, tuple(reasons), points, detail)


def _workspace_filter(ws: Workspace, prev: ShieldState, q: np.ndarray, dt: float, points_fn: PointsFn):
    reasons: list[str] = []
    detail = ""
    points = points_fn(q)
    prev_points = prev.points if prev.points is not None else points_fn(prev.q)
    if not all(np.all(np.isfinite(p)) for p in points.values()):   # nothing checkable: refuse the step
        return prev.q.copy(), prev_points, ["workspace"], "fingertip or flange position not finite"
    if "flange" in points and "flange" in prev_points:
        speed = float(np.linalg.norm(points["flange"] - prev_points["flange"])) / dt
        if speed > ws.max_flange_speed:
            scale = ws.max_flange_speed / speed
            q = prev.q + (q - prev.q) * scale
            points = points_fn(q)
            reasons.append("tcp_speed")
    depths = ws.depths(points)
    if any(d > 0 for d in depths.values()):
        prev_depths = ws.depths(prev_points)
        worse = [n for n, d in depths.items() if d > prev_depths.get(n, 0.0) + 1e-9]
        if worse:  # a point moving (further) out: refuse the step; moving back in is allowed
            reasons.append("workspace")
            detail = (f"{', '.join(worse)} would leave the workspace by "
                      f"{max(depths[n] for n in worse) * 1000:.1f} mm")
            return prev.q.copy(), prev_points, reasons, detail
    return q, points, reasons, detail


@dataclass
class InterventionCounter:
    """Counts shield interventions by reason (for /diagnostics)."""

    counts: Counter = field(default_factory=Counter)
    last_detail: str = ""

    def add(self, reasons: Sequence[str], detail: str = "") -> None:
        self.counts.update(reasons)
        if detail:
            self.last_detail = detail

    def as_dict(self) -> dict[str, int]:
        return {f"shield_{r}": int(self.counts.get(r, 0)) for r in REASONS}

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))
