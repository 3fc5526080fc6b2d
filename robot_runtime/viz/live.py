"""The live view: the graph's latest values, logged at a steady rate (no ROS in here).

Callbacks (from ``viz_node``'s subscriptions) drop values into latest-value slots; the node's
timer calls :meth:`LiveRolloutView.update`, which logs one step from whatever is newest. So
the viewer never queues behind the graph: a slow update skips to the newest values, and
:class:`~robot_runtime.viz.rerun_log.LogThrottle` thins images under load.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from robot_runtime.perception.preprocess import VisualPreprocessor
from robot_runtime.viz.rerun_log import RolloutLogger

#: Diagnostics statuses the view plots, by name, and what it takes from each.
POLICY_STATUS = "policy_node: loop"
CONTROLLER_STATUS = {"arm": "arm_controller_node: loop", "hand": "hand_controller_node: loop"}
CONTROLLER_KEYS = ("lateness_p99_ms", "overruns", "misses", "rate_hz")


@dataclass
class ViewCounts:
    updates: int = 0
    heavy: int = 0
    skipped_no_data: int = 0


class LiveRolloutView:
    """Logs the newest joints, targets, depth, cloud, timing and events to a :class:`RolloutLogger`.

    Args:
        logger: where to log.
        visual: makes the point cloud shown from each depth frame (the policy's own
            preprocessing when it takes points), or None for no cloud.
        T_base_camera: the camera pose in the base frame [4, 4].
    """

    def __init__(self, logger: RolloutLogger, visual: VisualPreprocessor | None, T_base_camera):
        self.logger = logger
        self.visual = visual
        self.T = np.asarray(T_base_camera, float)
        self._lock = threading.Lock()
        self._joints: dict[str, np.ndarray] = {}
        self._target: np.ndarray | None = None
        self._depth: tuple[float, np.ndarray, np.ndarray] | None = None
        self._depth_logged = -1.0
        self._camera_logged: tuple | None = None
        self._diag: dict[str, dict] = {}
        self._events: list[tuple[str, str]] = []
        self._shield_last: dict[str, float] = {}
        self.counts = ViewCounts()
        self.step = 0

    # ------------------------------------------------------------------ slots (any thread)
    def on_joints(self, part: str, q) -> None:
        """Measured joints of ``part`` ('arm' [7] or 'hand' [16], rad)."""
        self._joints[part] = np.asarray(q, float)

    def on_target(self, q) -> None:
        """The policy's newest 23 targets (rad, driver order)."""
        self._target = np.asarray(q, float)

    def on_depth(self, stamp: float, depth, K) -> None:
        """A depth frame [H, W] (m) acquired at ``stamp`` (s) with intrinsics ``K`` [3, 3]."""
        self._depth = (float(stamp), depth, np.asarray(K, float))

    def on_diagnostics(self, name: str, values: dict) -> None:
        self._diag[name] = values

    def on_event(self, text: str, level: str = "INFO") -> None:
        with self._lock:
            self._events.append((text, level))

    # ------------------------------------------------------------------ the timer
    def update(self, now: float) -> str:
        """Log one step at wall time ``now`` (s); returns what the throttle says ('' mostly)."""
        lg = self.logger
        with self._lock:
            events, self._events = self._events, []
        lg.set_time(now, self.step)
        for text, level in events:
            lg.log_event(text, level)
        measured = None
        if "arm" in self._joints and "hand" in self._joints:
            measured = np.concatenate([self._joints["arm"], self._joints["hand"]])
        depth = points = None
        frame = self._depth
        if frame is not None and frame[0] != self._depth_logged:
            stamp, depth, K = frame
            cam = (K.tobytes(), depth.shape)
            if cam != self._camera_logged:
                lg.log_camera(K, self.T, depth.shape[1], depth.shape[0])
                self._camera_logged = cam
            if self.visual is not None:
                try:
                    points = self.visual(depth, K, stamp, measured)
                except Exception:  # noqa: BLE001 - an empty crop is shown as no cloud
                    points = None
        if measured is None and self._target is None and depth is None:
            self.counts.skipped_no_data += 1
            return ""
        msg = lg.log_step(now, self.step, measured=measured, target=self._target, depth=depth, points=points)
        if depth is not None and lg.last_heavy:
            self._depth_logged = frame[0]
            self.counts.heavy += 1
        self._log_diagnostics()
        self.counts.updates += 1
        self.step += 1
        return msg

    def _log_diagnostics(self) -> None:
        lg = self.logger
        pol = self._diag.pop(POLICY_STATUS, None)
        if pol is not None:
            lg.log_policy(_num(pol.get("tick_ms_p50")), _num(pol.get("frame_age_ms_p50")))
        for part, name in CONTROLLER_STATUS.items():
            c = self._diag.pop(name, None)
            if c is None:
                continue
            lg.log_controller(part, {k: _num(c.get(k)) for k in CONTROLLER_KEYS if _num(c.get(k)) is not None})
            total = sum(_num(v) or 0.0 for k, v in c.items() if k.startswith("shield_"))
            lg.log_shield(part, total - self._shield_last.get(part, total))   # interventions since the last report
            self._shield_last[part] = total


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None

