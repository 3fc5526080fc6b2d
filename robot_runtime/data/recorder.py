"""The episode recorder: the policy's 20 Hz grid, what the policy sees, what was sent.

Pure (no ROS). Inputs are timestamped at acquisition and aligned to the grid: the
recorder node puts every message it receives into a :class:`GridAligner`, which gives
each grid instant ``t`` the newest sample of every stream acquired at or before ``t``
once that instant is settled (every stream has moved past it, or ``settle_s`` has
passed). A recorder loop that wakes late therefore costs no step: it catches up on the
grid instants it slept through. :meth:`EpisodeRecorder.tick` then records the step only
when every input is fresh at ``t``: the depth frame, both joint states and both
controllers' sent commands (what the safety shield let through). Otherwise the step is
*dropped*: counted by reason, listed in the episode's metadata, never filled in; a grid
instant never handed to :meth:`~EpisodeRecorder.tick` is dropped as ``missed_tick``.

The depth is turned into the policy's input by the one preprocessing path
(:class:`~robot_runtime.perception.preprocess.VisualPreprocessor`), so a recorded step is
byte for byte what ``policy_node`` would feed the network.

Disk: before an episode starts the free space must exceed ``min_free_mb`` plus room for
the longest episode; while it records, free space is checked every second and any write
error stops the episode. Both raise :class:`~robot_runtime.errors.DiskFullError`; the
saved episodes are untouched and the steps so far stay in the ``.partial`` log.

The ``.partial`` log is written by a background thread (:class:`PartialLogWriter`), so a
slow disk (a journal commit, another process's fsync) never stalls a grid tick; a write
error it meets is raised by the next tick or by :meth:`EpisodeRecorder.stop`.
"""
from __future__ import annotations

import errno
import math
import queue
import re
from collections import deque
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from robot_runtime import description as D
from robot_runtime.data.episode_file import (FORMAT, PARTIAL_SUFFIX, SUFFIX, PartialLog, read_partial, stack_steps,
                                             write_episode)
from robot_runtime.errors import DiskFullError, RecordingError
from robot_runtime.perception.preprocess import VisualPreprocessor

#: How the recorder node's start refusal begins while an input has never arrived (a caller
#: retries on it: :meth:`robot_runtime.teleop.collect.DemoCollector.episode`).
WAITING_FOR_INPUTS = "waiting for inputs"
DROP_REASONS = ("missed_tick", "no_frame", "stale_frame", "no_joint_state", "stale_joint_state", "no_command",
                "stale_command", "bad_frame")


def reduce_depth(depth: np.ndarray, stride: int) -> np.ndarray:
    """Depth [H, W] (m, NaN = none) -> [H // stride, W // stride] uint16 mm (0 = none), by striding."""
    d = depth[::stride, ::stride]
    mm = np.where(np.isfinite(d), np.clip(d * 1000.0, 0, 65535), 0)
    return np.rint(mm).astype(np.uint16)


@dataclass
class Stamped:
    """A value with its acquisition time ``t`` (s)."""

    t: float
    value: np.ndarray


@dataclass
class RecorderInputs:
    """The newest inputs at a grid tick (None: none yet). ``K`` goes with ``depth``."""

    depth: Stamped | None = None
    K: np.ndarray | None = None
    arm_state: Stamped | None = None
    hand_state: Stamped | None = None
    arm_command: Stamped | None = None
    hand_command: Stamped | None = None


class InputHistory:
    """The recent samples of one input stream, oldest first, by acquisition time ``t`` (s).

    Keeps at most ``max_len`` samples; a sample not newer than the newest is ignored (a stream
    is delivered in order, so that is a duplicate). ``decode`` turns a stored value into the
    array handed on (for depth: the image message, decoded only for the frames used).
    """

    def __init__(self, max_len: int, decode: Callable | None = None):
        self._t: deque[float] = deque(maxlen=max_len)
        self._v: deque = deque(maxlen=max_len)
        self.decode = decode

    def __len__(self) -> int:
        return len(self._t)

    @property
    def newest_t(self) -> float | None:
        return self._t[-1] if self._t else None

    def add(self, t: float, value) -> bool:
        if self._t and t <= self._t[-1]:
            return False
        self._t.append(t)
        self._v.append(value)
        return True

    def at(self, t: float) -> Stamped | None:
        """The newest sample acquired at or before ``t``, or None."""
        for i in range(len(self._t) - 1, -1, -1):
            if self._t[i] <= t:
                v = self._v[i]
                return Stamped(self._t[i], v if self.decode is None else self.decode(v))
        return None

    def forget_before(self, t: float) -> None:
        """Drop the samples a grid instant at or after ``t`` can no longer use."""
        while len(self._t) > 1 and self._t[1] <= t:
            self._t.popleft()
            self._v.popleft()


class GridAligner:
    """Aligns input streams, stamped at acquisition, to a grid of period ``period`` (s).

    :meth:`mark` announces grid instants as the loop reaches them (instants it skipped are
    filled in); :meth:`settled` hands back, oldest first, each announced instant that can no
    longer change, with the newest sample of each stream acquired at or before it. An instant
    is settled once every stream has a sample acquired after it, or at the latest ``settle_s``
    after it (a stream that stalled: the step then shows how old its input is).

    Args:
        period: grid period (s).
        settle_s: the longest wait for a late stream (s).
        max_len: samples kept per stream (cover the longest loop stall at the stream's rate).
        decode: per stream, a function from a stored value to its array.
    """

    STREAMS = ("depth", "arm_state", "hand_state", "arm_command", "hand_command")

    def __init__(self, period: float, settle_s: float, max_len: dict[str, int], decode: dict | None = None):
        self.period, self.settle_s = period, settle_s
        self.streams = {s: InputHistory(max_len[s], (decode or {}).get(s)) for s in self.STREAMS}
        self.K: np.ndarray | None = None
        self._pending: deque[float] = deque()
        self._last_mark: float | None = None

    def missing(self) -> list[str]:
        """The streams nothing has arrived on yet (and 'camera_info' while no intrinsics have): an
        episode started now would drop its first steps for want of them."""
        return [s for s, h in self.streams.items() if not len(h)] + (["camera_info"] if self.K is None else [])

    def add(self, stream: str, t: float, value) -> None:
        self.streams[stream].add(t, value)

    def mark(self, t_grid: float) -> None:
        """The loop reached grid instant ``t_grid`` (s); any instants it skipped are added too."""
        if self._last_mark is not None:
            n = int(round((t_grid - self._last_mark) / self.period))
            if n <= 0:
                return
            self._pending.extend(self._last_mark + k * self.period for k in range(1, n))
        self._pending.append(t_grid)
        self._last_mark = t_grid

    def mark_through(self, t: float) -> None:
        """Announce every grid instant up to ``t`` (s), on the phase of the instants marked so far."""
        if self._last_mark is not None:
            n = math.floor((t - self._last_mark) / self.period + 1e-9)
            if n >= 1:
                self.mark(self._last_mark + n * self.period)

    def settled(self, now: float, flush: bool = False) -> list[tuple[float, RecorderInputs]]:
        """The grid instants that are settled at ``now`` (all announced ones if ``flush``)."""
        out = []
        while self._pending:
            t = self._pending[0]
            newest = [h.newest_t for h in self.streams.values()]
            moved_past = all(n is not None and n > t for n in newest)
            if not (flush or moved_past or now - t >= self.settle_s):
                break
            self._pending.popleft()
            s = self.streams
            out.append((t, RecorderInputs(s["depth"].at(t), self.K, s["arm_state"].at(t), s["hand_state"].at(t),
                                          s["arm_command"].at(t), s["hand_command"].at(t))))
        keep_from = self._pending[0] if self._pending else (self._last_mark or 0.0) + self.period
        for h in self.streams.values():
            h.forget_before(keep_from)
        return out


class PartialLogWriter:
    """Appends steps to a :class:`PartialLog` on its own thread, in order.

    The loop only enqueues (microseconds). The first error (an ``OSError`` from a full disk, or
    any other) stops the writing; it is kept in :attr:`error`, the steps after it are not
    written, and the thread goes on taking them, so :meth:`drain` and :meth:`close` return.
    """

    #: Steps waiting to be written at most (10 s at 20 Hz): a disk slower than that drops steps
    #: (counted) rather than filling the robot PC's memory.
    MAX_QUEUED = 200
    #: The log is made durable (fsync) at least this often (s).
    SYNC_EVERY_S = 1.0

    def __init__(self, log: PartialLog, thread_setup: Callable[[], None] | None = None,
                 max_queued: int = MAX_QUEUED):
        self.log = log
        self._setup = thread_setup
        self.error: Exception | None = None
        self.written = 0
        self.step_bytes = 0
        self._next_sync = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued + 1)   # + the closing sentinel
        self._thread = threading.Thread(target=self._run, name="partial-log-writer", daemon=True)
        self._thread.start()

    def put(self, step: dict) -> bool:
        """Queue ``step`` for writing without blocking; False when the queue is full (the disk
        is behind): the caller counts the step as dropped."""
        if self._queue.unfinished_tasks >= self._queue.maxsize - 1:
            return False
        self._queue.put_nowait(step)
        return True

    @property
    def pending(self) -> int:
        """Steps handed over but not yet written."""
        return self._queue.unfinished_tasks

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every step handed over is written (or failed); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self) -> None:
        """Write what is queued, end the thread, close the file."""
        self._queue.put(None)
        self._thread.join()
        self.log.close()

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            step = self._queue.get()
            try:
                if step is None:
                    return
                if self.error is None:
                    before = self.log.bytes
                    self.log.append(step)
                    self.step_bytes = self.log.bytes - before
                    self.written += 1
                    if time.monotonic() >= self._next_sync:
                        self._next_sync = time.monotonic() + self.SYNC_EVERY_S
                        self.log.sync()
            except Exception as exc:  # noqa: BLE001 (a dead writer left stop() waiting forever)
                self.error = exc
            finally:
                self._queue.task_done()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "episode"


class EpisodeRecorder:
    """Records episodes into ``out_dir``, one file each.

    Args:
        out_dir: episode folder (created).
        rate_hz: the grid (the policy's rate).
        visual: the policy's preprocessing.
        proprio_order: for each policy slot, its index in the robot's joint order.
        static_meta: stored in every episode (joint names, config, calibration, ...).
        depth_stride: raw depth is kept at 1/stride resolution.
        min_free_mb: free-space floor (MB).
        max_episode_s: the longest episode (s); steps beyond it are not recorded.
        max_frame_age_s: a newest depth frame older than this at a tick drops the step (s; the
            policy's ``max_frame_age_s``: a step is kept exactly when the policy would act on it).
        max_state_age_s: joint states or sent commands older than this drop the step (s; the
            policy's ``max_state_age_s``).
        free_bytes: returns the free bytes under a path (injectable for tests).
        writer_setup: called first on each episode's log writer thread (the node gives it a
            real-time priority just below the loop's: a writer descheduled while it holds the GIL
            would hold up the loop).
    """

    def __init__(self, out_dir, rate_hz: float, visual: VisualPreprocessor, proprio_order, static_meta: dict,
                 depth_stride: int = 2, min_free_mb: float = 500.0, max_episode_s: float = 120.0,
                 max_frame_age_s: float = 0.1, max_state_age_s: float = 0.1, free_bytes: Callable[[Path], int] | None = None,
                 writer_setup: Callable[[], None] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.period = 1.0 / rate_hz
        self.visual = visual
        self.proprio_order = np.asarray(proprio_order, dtype=int)
        self.static_meta = static_meta
        self.depth_stride = depth_stride
        self.min_free = min_free_mb * 1e6
        self.max_steps = int(round(max_episode_s * rate_hz))
        self.max_frame_age, self.max_state_age = max_frame_age_s, max_state_age_s
        self.free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.writer_setup = writer_setup
        self._log: PartialLog | None = None
        self._writer: PartialLogWriter | None = None
        self._n_steps = 0   # the steps are kept on disk only (the .partial log), read back at stop
        self._meta: dict = {}
        self._drops: list[tuple[float, str]] = []
        self._last_tick: float | None = None
        self._camera: dict | None = None   # the depth camera's K and image size, kept in the metadata
        self._t_start = 0.0
        self._next_disk_check = 0.0
        self.step_bytes = 0
        self.error = ""
        self.last_saved: Path | None = None
        self.last_success: bool | None = None
        self.saved = 0
        self.total_dropped = 0

    # ------------------------------------------------------------------ episode
    @property
    def recording(self) -> bool:
        return self._log is not None

    def _needed_bytes(self) -> float:
        per_step = self.step_bytes or 200_000   # until a step has been measured: a generous guess
        return self.min_free + per_step * self.max_steps * 2   # the log, then the final file

    def start(self, task: str, operator_note: str = "", extra_meta: dict | None = None, now: float | None = None) -> Path:
        """Open a new episode; returns its ``.partial`` path.

        Raises:
            RecordingError: an episode is already recording.
            DiskFullError: not enough free space for a whole episode.
        """
        if self.recording:
            raise RecordingError(f"already recording {self._log.path.name}; stop or discard it first")
        free = self.free_bytes(self.out_dir)
        if free < self._needed_bytes():
            raise DiskFullError(f"{self.out_dir}: {free / 1e6:.0f} MB free; an episode needs "
                                f"{self._needed_bytes() / 1e6:.0f} MB (recorder.min_free_mb {self.min_free / 1e6:.0f} "
                                f"plus room for {self.max_steps} steps)")
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
        n = len(list(self.out_dir.glob(f"*{SUFFIX}"))) + len(list(self.out_dir.glob(f"*{PARTIAL_SUFFIX}")))
        stem = f"{stamp}_{_slug(task)}_{n:04d}"
        self._meta = {**self.static_meta, "format": FORMAT, "task": task, "operator_note": operator_note,
                      "started": datetime.fromtimestamp(now, timezone.utc).isoformat(), "rate_hz": 1.0 / self.period,
                      "visual": self.visual.spec.to_dict(), "depth_stride": self.depth_stride, **(extra_meta or {})}
        self._n_steps, self._drops, self.error, self._last_tick = 0, [], "", None
        self._camera = None
        self._t_start = now
        try:
            self._log = PartialLog(self.out_dir / (stem + PARTIAL_SUFFIX), self._meta)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self._writer = PartialLogWriter(self._log, self.writer_setup)
        self._next_disk_check = 0.0
        return self._log.path

    def tick(self, t_grid: float, inputs: RecorderInputs, now: float) -> str:
        """Record the step of grid time ``t_grid`` (s); returns '' or the reason it was dropped.

        Raises:
            DiskFullError: the disk filled up; the episode is stopped (its steps stay in the log).
        """
        if not self.recording or self._n_steps >= self.max_steps:
            return "not_recording"
        if t_grid < self._t_start:   # an instant from before the start, settled late
            return "before_start"
        if self._last_tick is not None:   # grid points the loop never ticked (it overran) are dropped steps
            for k in range(1, int(round((t_grid - self._last_tick) / self.period))):
                self._drops.append((self._last_tick + k * self.period, "missed_tick"))
                self.total_dropped += 1
        self._last_tick = t_grid
        reason = self._check(t_grid, inputs)
        if reason:
            self._drops.append((t_grid, reason))
            self.total_dropped += 1
            return reason
        i = inputs
        q = np.concatenate([i.arm_state.value, i.hand_state.value])
        try:
            visual = self.visual(i.depth.value, i.K, i.depth.t, q)
        except Exception as exc:  # a bad frame drops the step; it never stops the recording
            self._drops.append((t_grid, "bad_frame"))
            self.total_dropped += 1
            self.error = f"bad frame at {t_grid:.3f}: {exc}"
            return "bad_frame"
        if self._camera is None:
            h, w = np.shape(i.depth.value)
            self._camera = {"K": np.asarray(i.K, float).tolist(), "width": int(w), "height": int(h)}
        step = {"t": np.float64(t_grid), "depth_stamp": np.float64(i.depth.t),
                "arm_state_stamp": np.float64(i.arm_state.t), "hand_state_stamp": np.float64(i.hand_state.t),
                "command_stamp": np.array([i.arm_command.t, i.hand_command.t]), "q": q,
                "proprio": q[self.proprio_order], "command": np.concatenate([i.arm_command.value, i.hand_command.value]),
                "visual": visual, "depth": reduce_depth(i.depth.value, self.depth_stride)}
        try:
            if self._writer.error is not None:
                raise self._writer.error
            if now >= self._next_disk_check:
                self._next_disk_check = now + 1.0
                free = self.free_bytes(self.out_dir)
                if free < self.min_free:
                    raise OSError(errno.ENOSPC, f"only {free / 1e6:.0f} MB free (floor {self.min_free / 1e6:.0f} MB)")
        except OSError as exc:
            raise self._abort(exc) from exc
        if not self._writer.put(step):
            self._drops.append((t_grid, "writer_behind"))
            self.total_dropped += 1
            return "writer_behind"
        self.step_bytes = self._writer.step_bytes or self.step_bytes
        self._n_steps += 1
        return ""

    def _check(self, t: float, i: RecorderInputs) -> str:
        if i.depth is None or i.K is None:
            return "no_frame"
        if t - i.depth.t > self.max_frame_age:
            return "stale_frame"
        if i.arm_state is None or i.hand_state is None:
            return "no_joint_state"
        if t - min(i.arm_state.t, i.hand_state.t) > self.max_state_age:
            return "stale_joint_state"
        if i.arm_command is None or i.hand_command is None:
            return "no_command"
        if t - min(i.arm_command.t, i.hand_command.t) > self.max_state_age:
            return "stale_command"
        # any peer can publish on the joint topics: a step of the wrong size or with NaN is dropped
        for stream, n, reason in ((i.arm_state, len(D.ARM_JOINTS), "bad_joint_state"),
                                  (i.hand_state, len(D.HAND_JOINTS), "bad_joint_state"),
                                  (i.arm_command, len(D.ARM_JOINTS), "bad_command"),
                                  (i.hand_command, len(D.HAND_JOINTS), "bad_command")):
            v = np.asarray(stream.value)
            if v.shape != (n,) or not np.all(np.isfinite(v)):
                return reason
        return ""

    def _abort(self, exc: Exception) -> DiskFullError:
        """Stop the episode on a disk error: the steps written so far stay in the ``.partial``."""
        self._writer.close()
        err = self._disk_error(exc)
        self.error = str(err)
        self._log, self._writer = None, None
        return err

    def _disk_error(self, exc: Exception) -> DiskFullError:
        where = self._log.path if self._log is not None else self.out_dir
        n = self._writer.written if self._writer is not None else self._n_steps
        kept = f"; the {n} steps written so far stay in {where} (robot-runtime data recover)" \
            if self._log is not None else ""
        why = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        return DiskFullError(f"{where}: writing failed ({why}); the episode was stopped{kept}; "
                             f"saved episodes are untouched")

    def stop(self, success: bool | None, discard: bool = False, now: float | None = None) -> Path | None:
        """Save the episode (``success`` flag) or discard it; returns the saved file (None if discarded).

        Raises:
            RecordingError: nothing is recording, or the episode has no step to save.
            DiskFullError: the final file could not be written (the ``.partial`` stays).
        """
        if not self.recording:
            raise RecordingError("no episode is recording" + (f" (last error: {self.error})" if self.error else ""))
        log, writer = self._log, self._writer
        if discard:
            writer.close()
            log.delete()
            self._log, self._writer = None, None
            return None
        writer.drain()
        if writer.error is not None:
            raise self._abort(writer.error)
        if not self._n_steps:
            raise RecordingError(f"{log.path.name} has no recorded step (dropped: {self.drop_counts()}); "
                                 f"discard it")
        now = time.time() if now is None else now
        meta = {**self._meta, "complete": True, "partial": False, "success": success, "steps": self._n_steps,
                "ended": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                "dropped_steps": len(self._drops), "dropped": self.drop_counts(),
                "dropped_at": [[round(t, 4), r] for t, r in self._drops[:1000]],
                "camera": self._camera}
        final = log.path.with_name(log.path.name[:-len(PARTIAL_SUFFIX)] + SUFFIX)
        writer.close()
        self._log, self._writer = None, None
        try:
            _, steps, end = read_partial(log.path)
            if len(steps) != self._n_steps or end != "clean":
                self.error = (f"{log.path} holds {len(steps)} intact steps of {self._n_steps} ({end}); it is kept: "
                              f"recover it with `robot-runtime data recover`")
                raise RecordingError(self.error)
            write_episode(final, stack_steps(steps), meta)
        except OSError as exc:
            self.error = f"{final}: could not be written ({exc}); the steps stay in {log.path}"
            raise DiskFullError(self.error) from exc
        log.delete()
        self.last_saved = final
        self.last_success = success
        self.saved += 1
        return final

    def close(self) -> None:
        """Shut down mid-episode: write every queued step to the ``.partial`` and close it (kept)."""
        if self._writer is not None:
            self._writer.close()
        self._log, self._writer = None, None

    def drop_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, r in self._drops:
            counts[r] = counts.get(r, 0) + 1
        return counts

    def status(self) -> dict:
        return {"recording": self.recording, "episode": self._log.path.name if self._log else "",
                "steps": self._n_steps, "dropped": self.drop_counts(), "total_dropped": self.total_dropped,
                "saved": self.saved, "last_saved": str(self.last_saved or ""), "last_success": self.last_success,
                "error": self.error,
                "unwritten": self._writer.pending if self._writer is not None else 0,
                "task": self._meta.get("task", "") if self.recording else ""}
