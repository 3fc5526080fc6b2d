"""A deadline-based periodic loop for hard-rate control (no ROS here).

Each tick has an absolute deadline ``t0 + k * period`` on one grid, so the rate never
drifts. The loop sleeps until a short spin margin before the deadline, then polls the
clock up to the deadline: ``time.sleep`` alone wakes 50-100 us late on an idle Linux
machine and later on a busy one. A tick that overruns skips the deadlines it missed
(the grid keeps its phase) rather than bursting to catch up. Every tick's wake-up
lateness is recorded; :class:`LoopStatistics` summarises a window of them.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """p50 / p99 / max of a set of durations (ms), and how many there were."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    n: int

    @classmethod
    def of(cls, values_ms) -> "LatencySummary":
        v = np.asarray(values_ms, dtype=float)
        if v.size == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(float(np.percentile(v, 50)), float(np.percentile(v, 99)), float(v.max()), int(v.size))

    def as_dict(self) -> dict:
        return {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms, "n": self.n}


class LoopStatistics:
    """Wake-up lateness and tick duration of a periodic loop.

    A *miss* is a tick woken more than half a period late; an *overrun* is a deadline
    skipped because the previous tick ran past it.

    Args:
        period_s: the loop period (s).
        window: how many recent ticks the windowed summary covers.
        keep_all: also keep every lateness sample (for benchmarks; memory grows).
    """

    def __init__(self, period_s: float, window: int = 1000, keep_all: bool = False):
        self.period_s = period_s
        self.lateness_ms: deque[float] = deque(maxlen=window)
        self.tick_ms: deque[float] = deque(maxlen=window)
        self.all_lateness_ms: list[float] | None = [] if keep_all else None
        self.ticks = 0
        self.misses = 0
        self.overruns = 0
        self._tick_times: deque[float] = deque(maxlen=window)
        self._first_tick: float | None = None
        self._lock = threading.Lock()  # the loop records while /diagnostics reads

    def record(self, woke: float, lateness_s: float, tick_s: float) -> None:
        with self._lock:
            self._record(woke, lateness_s, tick_s)

    def _record(self, woke: float, lateness_s: float, tick_s: float) -> None:
        ms = lateness_s * 1e3
        self.ticks += 1
        self.lateness_ms.append(ms)
        self.tick_ms.append(tick_s * 1e3)
        self._tick_times.append(woke)
        if self._first_tick is None:
            self._first_tick = woke
        if self.all_lateness_ms is not None:
            self.all_lateness_ms.append(ms)
        if lateness_s > 0.5 * self.period_s:
            self.misses += 1

    def achieved_hz(self, over_s: float = 1.0) -> float:
        """Ticks per second over the last ``over_s`` seconds of ticks."""
        with self._lock:
            t = list(self._tick_times)
        if len(t) < 2:
            return 0.0
        end = t[-1]
        recent = [x for x in t if x >= end - over_s]
        if len(recent) < 2 or recent[-1] == recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def mean_hz(self) -> float:
        """Ticks per second since the first tick (the whole run: a stall anywhere lowers it)."""
        with self._lock:
            if self._first_tick is None or self.ticks < 2 or self._tick_times[-1] == self._first_tick:
                return 0.0
            return (self.ticks - 1) / (self._tick_times[-1] - self._first_tick)

    def summary(self) -> dict:
        """Flat key/values for ``/diagnostics``: rate, lateness p50/p99/max (ms), misses, overruns."""
        with self._lock:
            late = LatencySummary.of(list(self.lateness_ms))
            tick = LatencySummary.of(list(self.tick_ms))
        return {
            "rate_hz": round(self.achieved_hz(), 2),
            "mean_rate_hz": round(self.mean_hz(), 2),
            "target_hz": round(1.0 / self.period_s, 2),
            "lateness_p50_ms": round(late.p50_ms, 4),
            "lateness_p99_ms": round(late.p99_ms, 4),
            "lateness_max_ms": round(late.max_ms, 4),
            "tick_p99_ms": round(tick.p99_ms, 4),
            "ticks": self.ticks,
            "misses": self.misses,
            "overruns": self.overruns,
        }


class DeadlineLoop:
    """Calls ``tick(deadline)`` at absolute deadlines ``t0 + k / rate_hz`` until stopped.

    Args:
        rate_hz: loop rate (Hz).
        tick: called once per deadline with the deadline (s, on ``clock``).
        clock: monotonic clock (s).
        sleep: sleeps a duration (s).
        spin_s: how long before a deadline to stop sleeping and poll the clock (s).
        stats: where lateness is recorded (a new :class:`LoopStatistics` by default).
    """

    def __init__(self, rate_hz: float, tick: Callable[[float], None], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 2e-4,
                 stats: LoopStatistics | None = None):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self.tick = tick
        self.clock, self.sleep, self.spin_s = clock, sleep, spin_s
        self.stats = stats or LoopStatistics(self.period)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def wait_until(self, deadline: float) -> float:
        """Sleep, then poll, until ``deadline``; return the wake-up time."""
        remaining = deadline - self.clock()
        if remaining > self.spin_s:
            self.sleep(remaining - self.spin_s)
        now = self.clock()
        while now < deadline:
            now = self.clock()
        return now

    def run(self, max_ticks: int | None = None) -> None:
        """Run on the calling thread until :meth:`stop` (or ``max_ticks`` ticks)."""
        t0 = self.clock()
        k = 1
        done = 0
        while not self._stop.is_set() and (max_ticks is None or done < max_ticks):
            deadline = t0 + k * self.period
            woke = self.wait_until(deadline)
            self.tick(deadline)
            end = self.clock()
            self.stats.record(woke, woke - deadline, end - woke)
            done += 1
            k += 1
            behind = math.floor((end - t0) / self.period) + 1 - k
            if behind > 0:  # ran past later deadlines: skip them, keep the grid's phase
                self.stats.overruns += behind
                k += behind


def _set_timer_slack_ns(ns: int) -> bool:
    """Linux: let the kernel wake this thread within ``ns`` of its timer (default 50 us)."""
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def request_realtime(priority: int, inherited: bool = True) -> str:
    """Ask for SCHED_FIFO at ``priority`` for the calling thread (0: do not ask), and for the
    smallest timer slack (allowed to everyone). With ``inherited`` False, threads and
    processes it starts later begin at SCHED_OTHER (SCHED_RESET_ON_FORK).

    Returns a short description of the scheduling actually in effect; never raises,
    since many machines refuse real-time priority to unprivileged users.
    """
    slack = ", timer slack 1 ns" if _set_timer_slack_ns(1) else ""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return "SCHED_OTHER" + slack
    try:
        policy = os.SCHED_FIFO if inherited else os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        os.sched_setscheduler(0, policy, os.sched_param(priority))
        return f"SCHED_FIFO {priority}{slack}"
    except (PermissionError, OSError) as exc:
        return f"SCHED_OTHER{slack} (SCHED_FIFO {priority} refused: {exc.strerror or exc})"


def lower_priority(nice: int) -> str:
    """Add ``nice`` to the niceness of every thread of this process that exists now (threads
    started later inherit it from their creator), for work that must yield the CPU to the
    control loops: a viewer, a training job. On Linux niceness is per thread, so ``os.nice`` in
    one thread would leave the middleware's threads (started at ``rclpy.init``) as they were.

    Returns the niceness now in effect for the calling thread; never raises (0: unchanged).
    """
    if nice <= 0:
        return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError:                       # the thread ended meanwhile, or no such call here
            pass
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def tighten_gil_switching(interval_s: float = 1e-4) -> None:
    """Make a busy Python thread hand the GIL to a woken loop thread within ``interval_s``."""
    sys.setswitchinterval(interval_s)


class FrameLockedGrid:
    """The policy's tick grid, phase-locked to the camera's frame stamps when it can be (pure).

    All times are seconds on the camera's stamp clock (ROS time). While the camera's period
    (estimated from the stamps) divides the policy's ``period`` into a whole number of frames
    (within 2 %), the grid is *locked*: each tick is for the frame whose stamp falls on the
    grid, runs as soon as that frame is there, and the next grid time is that frame's stamp plus
    ``period`` (so the grid follows the camera's clock: no drift, jitter corrected every tick).
    If that frame has not arrived ``max_wait_s`` after its grid time, or the rates do not
    divide, the tick runs on the free grid (every ``period``, whatever frame is newest; the
    policy's stale-frame rules decide as before).

    Args:
        period: the policy's period (s).
        max_wait_s: how long after a grid time to wait for its frame (s); None: one camera
            period, at most half the policy's period.
    """

    RATIO_TOL = 0.02

    def __init__(self, period: float, max_wait_s: float | None = None):
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.period = float(period)
        self._max_wait_s = max_wait_s
        self._stamps: deque[float] = deque(maxlen=16)
        self.next_t: float | None = None
        self.camera_period: float | None = None
        self.locked = False
        self.ticks_on_frame = 0
        self.ticks_free = 0

    @property
    def max_wait_s(self) -> float:
        if self._max_wait_s is not None:
            return self._max_wait_s
        cam = self.camera_period or self.period
        return min(cam, 0.5 * self.period)

    def on_frame(self, stamp: float) -> None:
        """A frame stamped ``stamp`` (s) arrived (repeats and older stamps are ignored)."""
        if self._stamps and stamp <= self._stamps[-1]:
            return
        self._stamps.append(float(stamp))
        if len(self._stamps) >= 4:
            self.camera_period = float(np.median(np.diff(self._stamps)))
            n = self.period / self.camera_period
            self.locked = round(n) >= 1 and abs(n - round(n)) <= self.RATIO_TOL * n

    def decide(self, now: float, newest_stamp: float | None) -> str | None:
        """Whether to tick at ``now`` (s): ``"frame"`` (the grid's frame is here), ``"free"``
        (its time is past and no locked frame came), ``"start"`` (the first tick), or None (not yet)."""
        if self.next_t is None:
            self.next_t = now
            return "start"
        if self.locked and newest_stamp is not None and newest_stamp >= self.next_t - 0.5 * self.camera_period:
            return "frame"
        if now >= self.next_t + (self.max_wait_s if self.locked else 0.0):
            return "free"
        return None

    def advance(self, kind: str, stamp: float | None, now: float) -> None:
        """After a tick of ``kind`` (from :meth:`decide`): the next grid time."""
        if kind == "frame" and stamp is not None:
            self.ticks_on_frame += 1
            self.next_t = stamp + self.period
        else:
            self.ticks_free += kind == "free"
            self.next_t += self.period
        if self.next_t < now - self.period:   # far behind (a stall): skip ahead, keep the phase
            self.next_t += math.floor((now - self.next_t) / self.period) * self.period


class FrameLockedLoop:
    """Runs ``tick(grid_time)`` on a :class:`FrameLockedGrid` until stopped.

    Args:
        grid: the grid.
        newest_frame: takes the inputs and returns the newest frame's stamp (s) or None; called
            every ``poll_s`` (1 ms: it sees every frame of a camera up to several hundred Hz, so
            the grid knows the camera's period; a tick runs within a poll of its frame).
        tick: called with the grid time (s) of the tick.
        clock: the stamps' clock (s), ``time.time`` (ROS time).
        stats: lateness is the tick's start after its grid time (s).
    """

    def __init__(self, grid: FrameLockedGrid, newest_frame: Callable[[], float | None], tick: Callable[[float], None],
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 poll_s: float = 1e-3, stats: LoopStatistics | None = None):
        self.grid, self.newest_frame, self.tick = grid, newest_frame, tick
        self.clock, self.sleep, self.poll_s = clock, sleep, poll_s
        self.stats = stats or LoopStatistics(grid.period)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_ticks: int | None = None) -> None:
        done = 0
        while not self._stop.is_set() and (max_ticks is None or done < max_ticks):
            stamp = self.newest_frame()
            if stamp is not None:
                self.grid.on_frame(stamp)
            now = self.clock()
            kind = self.grid.decide(now, stamp)
            if kind is None:
                self.sleep(self.poll_s)
                continue
            grid_t = self.grid.next_t
            self.tick(grid_t)
            end = self.clock()
            self.stats.record(now, max(0.0, now - grid_t), end - now)
            self.grid.advance(kind, stamp, end)
            done += 1


class FrameLockedInstants:
    """The recorder's grid instants with the policy's timing (pure; seconds on the stamps' clock).

    Fed each tick with the stamps of the frames that arrived and the time: while the camera is
    locked to the grid (:class:`FrameLockedGrid`), each instant is the stamp of the frame on the
    grid, the frame a locked policy tick acts on; an instant whose frame has not come
    ``max_wait_s`` after its time, and every instant while the rates do not divide, is on the
    free grid (every ``period``).
    """

    def __init__(self, period: float):
        self.grid = FrameLockedGrid(period)   # its next_t is the next instant

    def instants(self, stamps, now: float) -> list[float]:
        """The instants (s, ascending) reached with these frame ``stamps`` (ascending) by ``now``."""
        out: list[float] = []
        g = self.grid
        for s in stamps:
            g.on_frame(s)
            if g.locked and g.next_t is not None:
                while s > g.next_t + 0.5 * g.camera_period:   # that instant's frame never came
                    out.append(g.next_t)
                    g.next_t += g.period
            if g.locked and (g.next_t is None or s >= g.next_t - 0.5 * g.camera_period):
                out.append(float(s))
                g.next_t = float(s) + g.period
        if g.next_t is None:
            g.next_t = now
        wait = g.max_wait_s if g.locked else 0.0
        while now >= g.next_t + wait:
            out.append(g.next_t)
            g.next_t += g.period
        return out
