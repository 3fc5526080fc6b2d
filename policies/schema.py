"""The observation/action schema a policy is trained with, carried by its checkpoint.

The policy sees 23 joint positions and emits 23 joint-position targets in *its* order
(HOP: 7 arm joints, then the hand as finger A, thumb, finger B, finger C); the drivers
name their joints ``joint1..joint7`` and ``joint_0.0..joint_15.0`` (index, middle, ring,
thumb). The schema lists, for each policy slot, the driver joint that fills it, and the
limits that scale it to [-1, 1]. Loading a checkpoint checks the mapping against the
live robot: a slot's scaling limits must be that joint's limits, so a thumb slot mapped
to a finger joint is refused rather than silently driving the wrong joint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.action import ActionSpec
from policies.errors import SchemaMismatchError
from robot_runtime import description as D
from robot_runtime.perception.preprocess import VisualSpec

#: The HOP vector's hand slots by finger, in HOP's order.
HOP_HAND_FINGERS: tuple[str, ...] = ("index", "thumb", "middle", "ring")
#: Scaling limits (lower, upper) in HOP's order (HOP_POLICY.md).
HOP_ARM_LIMITS = ((-6.2832, 6.2832), (-2.0590, 2.0944), (-6.2832, 6.2832), (-0.1920, 3.9270),
                  (-6.2832, 6.2832), (-1.6930, 3.1416), (-6.2832, 6.2832))
_FINGER = ((-0.4700, 0.4700), (-0.1960, 1.6100), (-0.1740, 1.7090), (-0.2270, 1.6180))
_THUMB = ((0.2630, 1.3960), (-0.1050, 1.1630), (-0.1890, 1.6440), (-0.1620, 1.7190))
#: A slot's scaling limits may differ from the live joint's limits by at most this (rad).
LIMIT_TOLERANCE = 0.01


def hand_joint_names(fingers=HOP_HAND_FINGERS) -> list[str]:
    """Driver joint names for hand slots filled finger by finger in ``fingers`` order."""
    base = {f: 4 * D.FINGERS.index(f) for f in D.FINGERS}
    unknown = [f for f in fingers if f not in base]
    if unknown or sorted(fingers) != sorted(D.FINGERS):
        raise SchemaMismatchError(f"hand order {list(fingers)} must name each of {list(D.FINGERS)} once")
    return [D.HAND_JOINTS[base[f] + k] for f in fingers for k in range(4)]


#: HOP's scaling limits of its four hand slots: finger A, thumb, finger B, finger C.
HOP_HAND_SLOT_LIMITS = (_FINGER, _THUMB, _FINGER, _FINGER)


def hop_joint_order(fingers=HOP_HAND_FINGERS) -> tuple[list[str], list[tuple[float, float]]]:
    """HOP's slots as driver joint names (``fingers``: the Allegro finger filling each hand slot),
    with the scaling limits of each slot (they belong to the slot, not to the finger put there)."""
    names = list(D.ARM_JOINTS) + hand_joint_names(fingers)
    limits = list(HOP_ARM_LIMITS) + [lim for slot in HOP_HAND_SLOT_LIMITS for lim in slot]
    return names, limits


@dataclass
class PolicySchema:
    """What a policy observes and emits.

    Attributes:
        joint_names: [23] driver joint name for each policy slot (proprio and action alike).
        lower, upper: [23] scaling limits (rad) per slot: q_scaled = 2 (q - lower) / (upper - lower) - 1.
        visual: the per-step visual input and its preprocessing.
        history: steps in the policy's context window.
        policy_hz: the rate the policy was trained at.
        action: the action representation and normalisation (:class:`policies.action.ActionSpec`);
            None for HOP's own: one absolute target per step, everything scaled by the limits.
    """

    joint_names: list[str]
    lower: list[float]
    upper: list[float]
    visual: VisualSpec = field(default_factory=VisualSpec)
    history: int = 16
    policy_hz: float = 20.0
    action: ActionSpec | None = None

    @classmethod
    def hop(cls, visual: VisualSpec | None = None, fingers=HOP_HAND_FINGERS, history: int = 16,
            policy_hz: float = 20.0) -> "PolicySchema":
        names, limits = hop_joint_order(fingers)
        return cls(names, [lo for lo, _ in limits], [hi for _, hi in limits], visual or VisualSpec(), history,
                   policy_hz)

    # ------------------------------------------------------------------ scaling
    @property
    def dim(self) -> int:
        return len(self.joint_names)

    def scale(self, q: np.ndarray) -> np.ndarray:
        """Joint positions [..., 23] in policy order (rad) -> [-1, 1] (float32)."""
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return (2.0 * (np.asarray(q, np.float64) - lo) / (hi - lo) - 1.0).astype(np.float32)

    def unscale(self, a: np.ndarray) -> np.ndarray:
        """Scaled values [..., 23] -> joint positions (rad, float64), policy order."""
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return (np.asarray(a, np.float64) + 1.0) * 0.5 * (hi - lo) + lo

    @property
    def chunk(self) -> int:
        """Targets the network predicts per step."""
        return 1 if self.action is None else int(self.action.chunk)

    def proprio_in(self, q: np.ndarray) -> np.ndarray:
        """Joints [..., 23] (rad, policy order) -> the network's proprio input (float32)."""
        return self.scale(q) if self.action is None else self.action.proprio_in(q)

    def targets(self, out: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """The network's output for one step [23 x chunk] and the joints [23] measured then (rad,
        policy order) -> targets [chunk, 23] (rad, policy order); row k is for k + 1 steps later."""
        if self.action is None:
            return self.unscale(np.asarray(out).reshape(1, self.dim))
        return self.action.targets(out, q_now)

    def index_in(self, names) -> np.ndarray:
        """For each policy slot, its index in the driver-ordered list ``names``."""
        pos = {n: i for i, n in enumerate(names)}
        return np.array([pos[n] for n in self.joint_names])

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        d = {"joint_names": list(self.joint_names), "lower": [float(x) for x in self.lower],
             "upper": [float(x) for x in self.upper], "visual": self.visual.to_dict(),
             "history": int(self.history), "policy_hz": float(self.policy_hz)}
        if self.action is not None:
            d["action"] = self.action.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicySchema":
        action = ActionSpec.from_dict(d["action"]) if d.get("action") is not None else None
        return cls(list(d["joint_names"]), [float(x) for x in d["lower"]], [float(x) for x in d["upper"]],
                   VisualSpec.from_dict(d["visual"]), int(d["history"]), float(d["policy_hz"]), action)

    # ------------------------------------------------------------------ checks
    def check(self, where: str = "schema") -> None:
        """Internal consistency. Raises SchemaMismatchError naming the field."""
        n = len(self.joint_names)
        if len(self.lower) != n or len(self.upper) != n:
            raise SchemaMismatchError(f"{where}: {n} joint names but {len(self.lower)} lower and "
                                      f"{len(self.upper)} upper limits")
        lo, hi = np.asarray(self.lower, float), np.asarray(self.upper, float)
        bad = [self.joint_names[i] for i in np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi) | (lo >= hi))]
        if bad:
            raise SchemaMismatchError(f"{where}: scaling limits of {bad} are not finite with lower < upper")
        dup = sorted({x for x in self.joint_names if self.joint_names.count(x) > 1})
        if dup:
            raise SchemaMismatchError(f"{where}: joint names appear twice: {dup}")
        if self.history < 1:
            raise SchemaMismatchError(f"{where}: history must be at least 1, got {self.history}")
        if self.action is not None:
            self.action.check(f"{where}: action")
            if self.action.dim != n:
                raise SchemaMismatchError(f"{where}: action statistics cover {self.action.dim} joints, the schema "
                                          f"names {n}")

    def check_against_robot(self, live_names, live_limits, policy_hz: float, where: str = "checkpoint") -> None:
        """Check the mapping against the live robot's joints and limits, and the rate.

        Args:
            live_names: the drivers' joint names (23).
            live_limits: [(lower, upper)] per live joint (rad), same order.
        Raises:
            SchemaMismatchError: naming the joints or values that do not fit.
        """
        self.check(where)
        live = list(live_names)
        missing = [n for n in live if n not in self.joint_names]
        unknown = [n for n in self.joint_names if n not in live]
        if missing or unknown:
            raise SchemaMismatchError(f"{where}: joint names do not match the robot: missing {missing}, "
                                      f"unknown {unknown}")
        lim = dict(zip(live, live_limits))
        wrong = []
        for name, lo, hi in zip(self.joint_names, self.lower, self.upper):
            llo, lhi = lim[name]
            if abs(lo - llo) > LIMIT_TOLERANCE or abs(hi - lhi) > LIMIT_TOLERANCE:
                wrong.append(f"{name}: scaling ({lo:.3f}, {hi:.3f}) vs robot ({llo:.3f}, {lhi:.3f})")
        if wrong:
            raise SchemaMismatchError(f"{where}: the joint mapping does not fit the robot's limits "
                                      f"(a slot mapped to the wrong joint?): " + "; ".join(wrong))
        if abs(self.policy_hz - policy_hz) > 1e-6:
            raise SchemaMismatchError(f"{where}: trained at {self.policy_hz:g} Hz but rates.policy_hz is "
                                      f"{policy_hz:g}")
