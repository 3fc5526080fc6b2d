"""Replay of recorded depth at its recorded timing.

The recording is an ``.npz`` with ``depth`` [N, H, W] float32 (m), ``stamps`` [N] (s, any
origin, increasing) and ``K`` [3, 3], or a rosbag2 recording (MCAP or sqlite3: the bag
folder or its file), read by :func:`robot_runtime.data.rosbag.read_depth_frames` (every frame
in memory: a minute of 320x240 depth at 30 Hz is about 550 MB). Frames come out at the recorded spacing, stamped
with the replay clock's time when they are released. A reader that falls behind (a stalled
process) gets the newest frame that is due, as from a camera, and the ones it missed are
skipped (counted in ``skipped``): never a burst of overdue frames stamped a moment apart.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from robot_runtime.devices.base import DepthCamera, DepthFrame
from robot_runtime.errors import DeviceError


def save_depth_recording(path, depth: np.ndarray, stamps: np.ndarray, K: np.ndarray) -> None:
    """Write a recording that :class:`ReplayCamera` plays."""
    np.savez_compressed(path, depth=np.asarray(depth, np.float32), stamps=np.asarray(stamps, float),
                        K=np.asarray(K, float))


class ReplayCamera(DepthCamera):
    def __init__(self, cfg, node=None, clock: Callable[[], float] = time.monotonic,
                 stamp_clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.clock, self.stamp_clock, self.sleep = clock, stamp_clock, sleep
        self._i = 0
        self.skipped = 0

    def connect(self) -> None:
        path = Path(self.cfg.path)
        if path.is_dir() or path.suffix in (".mcap", ".db3"):
            from robot_runtime.data.rosbag import read_depth_frames  # noqa: PLC0415 - rosbags only for a bag
            from robot_runtime.errors import RecordingError  # noqa: PLC0415

            try:
                self.depth, self.stamps, self.K = read_depth_frames(
                    path, self.cfg.bag_depth_topic or self.cfg.depth_topic, self.cfg.bag_info_topic or self.cfg.info_topic)
            except RecordingError as exc:
                raise DeviceError(str(exc)) from exc
        else:
            try:
                with np.load(path) as f:
                    self.depth, self.stamps, self.K = f["depth"], f["stamps"], f["K"]
            except (OSError, ValueError, KeyError) as exc:
                raise DeviceError(f"{path}: not a depth recording (need depth, stamps, K): {exc}") from exc
        if self.depth.ndim != 3 or len(self.stamps) != len(self.depth) or self.K.shape != (3, 3):
            raise DeviceError(f"{self.cfg.path}: depth {self.depth.shape}, stamps {self.stamps.shape}, "
                              f"K {self.K.shape} do not fit together")
        if len(self.stamps) > 1 and np.any(np.diff(self.stamps) <= 0):
            raise DeviceError(f"{self.cfg.path}: stamps are not increasing")
        self._i = 0
        self._t0 = self.clock()

    def read(self, timeout_s: float = 0.1) -> DepthFrame | None:
        if self._i >= len(self.depth):
            if not self.cfg.loop:
                return None
            # the next pass starts one mean frame spacing after the last frame, keeping the pace
            span = self.stamps[-1] - self.stamps[0]
            step = span / (len(self.stamps) - 1) if len(self.stamps) > 1 else 0.0
            self._t0 += span + step
            self._i = 0
        now = self.clock()
        while self._i + 1 < len(self.depth) and self._t0 + (self.stamps[self._i + 1] - self.stamps[0]) <= now:
            self._i += 1          # overdue and already overtaken by the next frame: a camera drops it
            self.skipped += 1
        due = self._t0 + (self.stamps[self._i] - self.stamps[0])
        wait = due - now
        if wait > timeout_s:
            self.sleep(timeout_s)
            return None
        if wait > 0:
            self.sleep(wait)
        frame = DepthFrame(self.depth[self._i], self.K, self.stamp_clock())
        self._i += 1
        return frame

    def disconnect(self) -> None:
        self._i = 0
