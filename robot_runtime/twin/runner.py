"""Runs a :class:`TwinSimulation` in real time and hands its outputs to a sink (no ROS here).

One thread owns the simulation; depth frames are snapshotted there (cheap) and drawn
on a second thread with its own GL context, so rendering never stalls physics or the
joint-state streams. Colour frames (for calibration, ``color_hz`` > 0) are drawn on that same
thread (two GL contexts drawing on two threads at once crashed Mesa's software EGL): each
holds up depth for about 0.1 s, so calibration runs show skipped depth frames. Commands
arrive from other threads through latest-value slots; resets are requests the loop carries
out between physics steps.
Each output stream (arm state, hand state, depth, object poses, statistics) has its own
rate and absolute deadlines, so rates do not drift.
"""
from __future__ import annotations

import math
import queue
from collections import deque
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from robot_runtime.config import TwinConfig
from robot_runtime.errors import TwinError
from robot_runtime.twin.sim import DepthRenderer, JointSample, ObjectPose, RealTimePacer, TwinSimulation


class TwinSink(Protocol):
    """Where the runner's outputs go. ``stamp`` is the acquisition time (s, the stamp clock's)."""

    def arm_state(self, sample: JointSample, stamp: float) -> None: ...
    def hand_state(self, sample: JointSample, stamp: float) -> None: ...
    def depth(self, depth: np.ndarray, K: np.ndarray, stamp: float) -> None: ...
    def color(self, rgb: np.ndarray, K: np.ndarray, stamp: float) -> None: ...
    def object_poses(self, poses: dict[str, ObjectPose], stamp: float) -> None: ...
    def episode(self, task: str, seed: int, objects: list[str], active: list[str]) -> None: ...
    def statistics(self, stats: dict, stamp: float) -> None: ...


@dataclass
class _Stream:
    period: float
    next_due: float = 0.0
    count: int = 0


@dataclass
class _ResetRequest:
    task: str
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class TwinRunner:
    """Real-time loop over a twin.

    Args:
        sim: the simulation (the runner's thread becomes its only user).
        cfg: rates for each output stream.
        sink: receives outputs.
        clock: monotonic clock for pacing (s).
        stamp_clock: clock for message stamps (s; ROS time in the node).
        sleep: sleeps a duration (s); injectable for tests.
        poll_inputs: called at the start of every cycle on the loop's thread, to take
            commands that arrived (they are handed over with :meth:`command_arm` and
            :meth:`command_hand`).
        thread_setup: called first on the physics thread (the node gives it a real-time
            priority: the twin stands in for hardware, which the host's load never slows).
        color_hz: colour frames per second (0: none); needs ``cfg.calibration_marker``.
    """

    def __init__(self, sim: TwinSimulation, cfg: TwinConfig, sink: TwinSink,
                 clock: Callable[[], float] = time.monotonic, stamp_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, poll_inputs: Callable[[], None] | None = None,
                 thread_setup: Callable[[], None] | None = None, color_hz: float = 0.0):
        self.sim, self.cfg, self.sink = sim, cfg, sink
        self.poll_inputs, self.thread_setup = poll_inputs, thread_setup
        self.clock, self.stamp_clock, self.sleep = clock, stamp_clock, sleep
        self.pacer = RealTimePacer(sim.dt)
        self.streams = {
            "arm": _Stream(1.0 / cfg.arm_state_hz),
            "hand": _Stream(1.0 / cfg.hand_state_hz),
            "depth": _Stream(1.0 / cfg.camera.fps),
            "objects": _Stream(1.0 / cfg.object_pose_hz),
            "stats": _Stream(1.0),
        }
        if color_hz > 0:
            if not cfg.calibration_marker:
                raise TwinError("twin colour frames need twin.calibration_marker: true")
            self.streams["color"] = _Stream(1.0 / color_hz)
        self.color_skipped = 0
        self._free_color_scene: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._arm_cmd: np.ndarray | None = None
        self._hand_cmd: np.ndarray | None = None
        self._reset: _ResetRequest | None = None
        self.render_ms: deque[float] = deque(maxlen=300)  # recent render times (ms)
        self.rejected_commands = 0
        self.depth_skipped = 0
        self._free_scenes: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(2):
            self._free_scenes.put(sim.new_scene())
        self._to_render: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._render_thread: threading.Thread | None = None
        self._started: float | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------ commands (any thread)
    def command_arm(self, q: np.ndarray) -> None:
        """Latest arm servo target (7, rad); validated by the simulation when applied."""
        with self._lock:
            self._arm_cmd = np.array(q, dtype=float)

    def command_hand(self, tau: np.ndarray) -> None:
        """Latest hand torques (16, N m)."""
        with self._lock:
            self._hand_cmd = np.array(tau, dtype=float)

    def request_reset(self, task: str, seed: int, timeout: float = 5.0) -> None:
        """Reset to ``task`` with ``seed`` and wait until the loop has done it.

        Raises:
            TwinError: unknown task, bad seed, or the loop did not answer in time.
        """
        req = _ResetRequest(task, seed)
        with self._lock:
            self._reset = req
        if not req.done.wait(timeout):
            raise TwinError(f"twin did not reset within {timeout} s")
        if req.error is not None:
            raise req.error

    # ------------------------------------------------------------ loop
    def start(self) -> None:
        self._render_thread = threading.Thread(target=self._render_loop, name="twin-render", daemon=True)
        self._render_thread.start()
        if "color" in self.streams:
            self._free_color_scene.put(self.sim.new_scene())
        self._thread = threading.Thread(target=self._run, name="twin-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for t in (self._thread, self._render_thread):
            if t is not None:
                t.join(timeout)

    def _render_loop(self) -> None:
        renderer = color = None
        try:
            renderer = DepthRenderer(self.sim.model, self.cfg.camera)
            K = self.sim.intrinsics()
            if "color" in self.streams:
                color = self.sim.new_color_renderer()
                K_color = self.sim.color_intrinsics()
            while not self._stop.is_set():
                try:
                    kind, scene, stamp = self._to_render.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "color":
                    rgb = color.render(scene)
                    self._free_color_scene.put(scene)
                    self.sink.color(rgb, K_color, stamp)
                    continue
                t0 = time.perf_counter()
                depth = renderer.render(scene)
                self.render_ms.append((time.perf_counter() - t0) * 1e3)
                self._free_scenes.put(scene)
                self.sink.depth(depth, K, stamp)
        except BaseException as exc:
            self.error = exc
        finally:
            for r in (renderer, color):
                if r is not None:
                    r.close()

    def _run(self) -> None:
        try:
            if self.thread_setup is not None:
                self.thread_setup()
            self._emit_episode()
            now = self.clock()
            self._started = now
            self.pacer.start(now)
            for s in self.streams.values():
                s.next_due = now
            while not self._stop.is_set():
                self.cycle(self.clock())
                wake = min(s.next_due for s in self.streams.values())
                wake = min(wake, self.clock() + (0.002 if self.poll_inputs else 0.01))
                delay = wake - self.clock()
                if delay > 0:
                    self.sleep(delay)
        except BaseException as exc:  # reported by the node, which then shuts down
            self.error = exc
        finally:
            self.sim.close()

    def cycle(self, now: float) -> None:
        """One pass: apply commands and resets, step physics to ``now``, emit due outputs."""
        if self.poll_inputs is not None:
            self.poll_inputs()
        with self._lock:
            arm, self._arm_cmd = self._arm_cmd, None
            hand, self._hand_cmd = self._hand_cmd, None
            reset, self._reset = self._reset, None
        if reset is not None:
            arm = hand = None   # commands for the robot before the reset, not the reset one
            try:
                self.sim.reset(reset.task, reset.seed)
                self._emit_episode()
            except Exception as exc:  # handed back to the caller of request_reset
                reset.error = exc if isinstance(exc, TwinError) else TwinError(str(exc))
            reset.done.set()
        for cmd, setter in ((arm, self.sim.set_arm_target), (hand, self.sim.set_hand_torque)):
            if cmd is not None:
                try:
                    setter(cmd)
                except ValueError:
                    self.rejected_commands += 1
        steps = self.pacer.steps_due(now)
        if steps:
            self.sim.step(steps)
            self.pacer.record(steps, self.clock())
        stamp = self.stamp_clock()
        due = {name for name, s in self.streams.items() if now >= s.next_due}
        if "hand" in due:
            self.sink.hand_state(self.sim.hand_state(), stamp)
        if "arm" in due:
            self.sink.arm_state(self.sim.arm_state(), stamp)
        if "objects" in due:
            self.sink.object_poses(self.sim.object_poses(), stamp)
        if "depth" in due:
            try:
                scene = self._free_scenes.get_nowait()
            except queue.Empty:  # both scenes still being drawn: the renderer is behind
                self.depth_skipped += 1
            else:
                self.sim.snapshot(scene)
                self._to_render.put(("depth", scene, stamp))
        if "color" in due:
            try:
                scene = self._free_color_scene.get_nowait()
            except queue.Empty:  # the last colour frame is still being drawn
                self.color_skipped += 1
            else:
                self.sim.snapshot(scene)
                self._to_render.put(("color", scene, stamp))
        for name in due:
            s = self.streams[name]
            s.count += 1
            s.next_due += s.period
            if s.next_due < now - s.period:  # fell far behind: skip ahead rather than burst
                s.next_due = now + s.period
        if "stats" in due:
            self.sink.statistics(self.statistics(), stamp)

    def statistics(self) -> dict:
        """Real-time factor, dropped time, per-stream counts and render time (ms)."""
        r = list(self.render_ms)
        return {
            "real_time_factor": round(self.pacer.real_time_factor(), 4),
            "physics_hz": 1.0 / self.sim.dt,
            "sim_time_s": round(self.sim.time, 3),
            "uptime_s": round(self.clock() - self._started, 3) if self._started is not None else 0.0,
            "dropped_s": round(self.pacer.dropped_s, 4),
            "rejected_commands": self.rejected_commands,
            "render_ms_p50": round(float(np.median(r)), 3) if r else math.nan,
            "render_ms_max": round(float(np.max(r)), 3) if r else math.nan,
            "depth_skipped": self.depth_skipped,
            **({"color_skipped": self.color_skipped} if "color" in self.streams else {}),
            **{f"{k}_count": s.count for k, s in self.streams.items() if k != "stats"},
            "task": self.sim.task,
            "seed": self.sim.seed,
            **{f"task_{k}": v for k, v in self.task_progress().items()},
        }

    def task_progress(self) -> dict:
        """How the task is going, from ground truth: the object to grasp, how high it is now and
        at most above where it started (m), and whether the task counts as solved."""
        from robot_runtime.errors import TeleopError  # noqa: PLC0415
        from robot_runtime.teleop.scripted import task_objects, task_success  # noqa: PLC0415

        start = getattr(self, "_start_poses", None)
        if not start:
            return {}
        try:
            obj = task_objects(self.sim.task, self.sim.active_objects)[0]
        except TeleopError:
            return {}
        now = {k: (v.position, v.quaternion) for k, v in self.sim.object_poses().items()}
        lift = float(now[obj][0][2] - start[obj][0][2])
        self._max_lift = max(getattr(self, "_max_lift", -np.inf), lift)
        return {"object": obj, "lift_m": round(lift, 4), "max_lift_m": round(self._max_lift, 4),
                "solved": bool(task_success(self.sim.task, self.sim.active_objects, start, now))}

    def _emit_episode(self) -> None:
        poses = self.sim.object_poses()
        self._start_poses = {k: (v.position.copy(), v.quaternion.copy()) for k, v in poses.items()}
        self._max_lift = -np.inf
        self.sink.episode(self.sim.task, self.sim.seed, list(poses), list(self.sim.active_objects))
