"""Stamped joint targets: validation, a short history, interpolation and the watchdog (pure).

A target is a joint-position vector stamped with the time it is *for* (s, ROS time).
Between the two targets around ``now`` the buffer interpolates linearly, per joint; at
or after the newest stamp it returns the newest target: it never extrapolates.

The watchdog judges a source by the arrival time of its newest target: fresh, then
*hold* after ``hold_after_s`` (the controller brakes and holds position), then *latch*
after ``latch_after_s`` (the controller stops until re-armed).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np


class TargetRejected(ValueError):
    """A target message was refused; ``reason`` is one of the shield's reason names."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def select_joints(msg_names: Sequence[str], positions: Sequence[float], expected_all: Sequence[str],
                  wanted: Sequence[str]) -> np.ndarray:
    """Positions of ``wanted`` joints from a target naming exactly ``expected_all`` (any order).

    Raises:
        TargetRejected: ``names`` when the joint names are missing, unknown, duplicated or
            not one per value; ``non_finite`` when a wanted value is NaN or infinite.
    """
    names = list(msg_names)
    if len(names) != len(positions):
        raise TargetRejected("names", f"target has {len(names)} joint names but {len(positions)} positions")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TargetRejected("names", f"target names joints more than once: {dup}")
    if set(names) != set(expected_all):
        missing = sorted(set(expected_all) - set(names))
        extra = sorted(set(names) - set(expected_all))
        raise TargetRejected("names", f"target joint names do not match: missing {missing}, unexpected {extra}")
    index = {n: i for i, n in enumerate(names)}
    q = np.asarray([positions[index[n]] for n in wanted], dtype=float)
    if not np.all(np.isfinite(q)):
        bad = [n for n, v in zip(wanted, q) if not np.isfinite(v)]
        raise TargetRejected("non_finite", f"target has non-finite values for {bad}")
    return q


@dataclass(frozen=True)
class StampedTarget:
    """Positions [n] (rad) for time ``t`` (s), received at ``received`` (s)."""

    t: float
    q: np.ndarray
    received: float


class TargetBuffer:
    """The last few stamped targets of one source, in stamp order.

    Args:
        capacity: how many targets to keep.
        max_lead_s: targets stamped further than this ahead of their arrival are refused
            (a clock mismatch, not a plan).
        max_age_s: targets stamped further than this before their arrival are refused as late.
    """

    def __init__(self, capacity: int = 8, max_lead_s: float = 1.0, max_age_s: float = 0.1):
        self.capacity, self.max_lead_s, self.max_age_s = capacity, max_lead_s, max_age_s
        self._t: list[float] = []
        self._items: list[StampedTarget] = []

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._t.clear()
        self._items.clear()

    @property
    def newest(self) -> StampedTarget | None:
        return self._items[-1] if self._items else None

    def add(self, t: float, q: np.ndarray, received: float) -> None:
        """Insert a target for time ``t``; a target for an existing stamp replaces it.

        Raises:
            TargetRejected: ``future_target`` or ``late_target`` (see the class arguments).
        """
        if t - received > self.max_lead_s:
            raise TargetRejected("future_target", f"target is stamped {t - received:.3f} s ahead of now "
                                                  f"(limit {self.max_lead_s} s): are the clocks in sync?")
        if received - t > self.max_age_s:
            raise TargetRejected("late_target", f"target arrived {received - t:.3f} s after its stamp "
                                                f"(limit {self.max_age_s} s)")
        item = StampedTarget(float(t), np.array(q, dtype=float), float(received))
        i = bisect.bisect_left(self._t, item.t)
        if i < len(self._t) and self._t[i] == item.t:
            self._items[i] = item
        else:
            self._t.insert(i, item.t)
            self._items.insert(i, item)
        while len(self._items) > self.capacity:
            self._t.pop(0)
            self._items.pop(0)

    def sample(self, now: float) -> np.ndarray | None:
        """Interpolated positions at ``now`` (s): exact at each stamp, the newest after it, the
        oldest before it; None when empty."""
        if not self._items:
            return None
        if now >= self._t[-1]:
            return self._items[-1].q.copy()
        i = bisect.bisect_right(self._t, now)
        if i == 0:
            return self._items[0].q.copy()
        a, b = self._items[i - 1], self._items[i]
        s = (now - a.t) / (b.t - a.t)
        return a.q + s * (b.q - a.q)


class Freshness(str, Enum):
    WAITING = "waiting"  # no target from this source since it was engaged
    FRESH = "fresh"
    HOLD = "hold"        # older than hold_after_s: brake and hold
    LATCH = "latch"      # older than latch_after_s: stop until re-armed


def freshness(newest_received: float | None, engaged_at: float, now: float, hold_after_s: float,
              latch_after_s: float) -> Freshness:
    """Judge a source at ``now`` by when its newest target arrived (all s, one clock).

    Targets that arrived before the source was engaged do not count: a source that has
    sent nothing since is *waiting* (hold, but never latch, so arming ahead of the source
    is safe).
    """
    if newest_received is None or newest_received < engaged_at:
        return Freshness.WAITING
    age = now - newest_received
    if age > latch_after_s:
        return Freshness.LATCH
    if age > hold_after_s:
        return Freshness.HOLD
    return Freshness.FRESH
