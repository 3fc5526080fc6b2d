"""The shell every looping node shares: the loop thread, its inputs' node, status and diagnostics.

A looping node (the two controllers, the policy, the recorder, teleop) subclasses
:class:`LoopNode`, builds its plain class, its inputs and publishers on :attr:`LoopNode.io`,
and calls :meth:`LoopNode.start_loop`. The shell then:

- runs :meth:`LoopNode.tick` on a :class:`~robot_runtime.control.loop.DeadlineLoop` thread of
  its own, set up once for real time (SCHED_FIFO when allowed and asked for, a short GIL
  switch interval, start-up objects frozen out of the collector);
- checks every second, from the executor, that the loop is alive: a loop that raised ends the
  node (``SystemExit`` naming the error), so the launcher sees it die rather than hang;
- publishes ``/<node>/status`` (latched JSON of :meth:`LoopNode.status`) whenever what
  :meth:`LoopNode.status_key` keeps of it changes, from whichever thread asks, and
  ``/diagnostics`` once a second from the loop thread (loop statistics, scheduling and
  :meth:`LoopNode.diagnostics`).

:class:`robot_runtime.ros_io.DepthInput` is the one depth input of every node that reads the
camera, looping or not.
"""
from __future__ import annotations

import gc
import json
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String

from robot_runtime import ros_io
from robot_runtime.control.loop import (DeadlineLoop, FrameLockedGrid, FrameLockedLoop, LoopStatistics, request_realtime,
                                        tighten_gil_switching)


class LoopNode(Node):
    """A node whose work is a fixed-rate loop (see the module's docstring).

    Subclasses override :meth:`tick` and, as they need, :meth:`status`, :meth:`status_key`,
    :meth:`diagnostics` and :meth:`on_status_change`; ``close`` stops the loop first
    (:meth:`stop_loop`) and destroys :attr:`io` last (:meth:`destroy_io`).

    Attributes:
        io: the loop's own node (polled subscriptions and the loop's publishers). It is never
            spun by an executor, so the loop takes its messages without competing for the GIL.
        hardware_id: the ``hardware_id`` of this node's ``/diagnostics`` status.
    """

    hardware_id = "robot_runtime"

    def __init__(self, name: str):
        super().__init__(name)
        # Without the global arguments, or `-r __node:=...` would give it this node's name.
        self.io = rclpy.create_node(f"{name}_io", context=self.context, use_global_arguments=False)
        self.pub_status = self.create_publisher(String, f"/{name}/status", ros_io.LATCHED_QOS)
        self.pub_diag = self.io.create_publisher(DiagnosticArray, "/diagnostics", ros_io.STATE_QOS)
        self.loop_error: BaseException | None = None
        self.sched_info = "starting"
        self.executor_sched = "SCHED_OTHER"
        self.stats: LoopStatistics | None = None
        self._loop: DeadlineLoop | FrameLockedLoop | None = None
        self.frame_grid: FrameLockedGrid | None = None
        self._thread: threading.Thread | None = None
        self._status_lock = threading.Lock()
        self._last_status_key = None
        self._next_diag = 0.0

    # ------------------------------------------------------------------ the loop
    def start_loop(self, rate_hz: float, realtime_priority: int, spin_s: float = 0.0,
                   priority_key: str = "", keep_all: bool = False, run: bool = True,
                   newest_frame=None) -> None:
        """Create the loop at ``rate_hz`` (Hz) and its statistics, and start its thread (``run``;
        without it only the statistics and the liveness check are set up, for a loop driven
        from elsewhere). ``realtime_priority`` 0 keeps SCHED_OTHER (``priority_key`` names the
        config key that says so); ``keep_all`` keeps every tick's lateness. With
        ``newest_frame`` (takes the inputs, returns the newest frame's stamp or None) the ticks
        are locked to the camera's frames (:class:`FrameLockedLoop`) instead of a free deadline grid."""
        self.stats = LoopStatistics(1.0 / rate_hz, keep_all=keep_all)
        self.create_timer(1.0, self._check_loop)
        if not run:
            return
        if newest_frame is not None:
            self.frame_grid = FrameLockedGrid(1.0 / rate_hz)
            self._loop = FrameLockedLoop(self.frame_grid, newest_frame, self._on_deadline, stats=self.stats)
        else:
            self._loop = DeadlineLoop(rate_hz, self._on_deadline, spin_s=spin_s, stats=self.stats)
        self._thread = threading.Thread(target=self._run_loop, args=(realtime_priority, priority_key),
                                        name=f"{self.get_name()}-loop", daemon=True)
        self._thread.start()
        if realtime_priority > 1:
            # The calling thread spins the executor (services, status). Descheduled by an ordinary
            # process while it holds the GIL, it would hold up the real-time loop thread; threads
            # and processes it starts later (a hot-swap's loader) stay ordinary.
            self.executor_sched = request_realtime(realtime_priority - 1, inherited=False)

    def _run_loop(self, priority: int, priority_key: str) -> None:
        self.sched_info = request_realtime(priority) if priority else f"SCHED_OTHER ({priority_key or 'priority'} 0)"
        tighten_gil_switching()
        gc.collect()
        gc.freeze()  # start-up objects never need collecting again: shorter GC pauses in the loop
        try:
            self._loop.run()
        except BaseException as exc:  # the executor's check then ends the node
            self.loop_error = exc
            self.get_logger().fatal(f"{self.get_name()} loop failed: {exc!r}")

    def _on_deadline(self, deadline: float) -> None:
        now = time.time()
        self.tick(now, deadline)
        self.after_tick(now)

    def after_tick(self, now: float) -> None:
        """Once a second: ``/diagnostics`` and the status (called after every tick)."""
        if now < self._next_diag:
            return
        self._next_diag = now + 1.0
        values, level, message = self.diagnostics(now)
        summary = self.stats.summary() if self.stats is not None else {}
        self.pub_diag.publish(ros_io.diagnostics_msg(now, f"{self.get_name()}: loop", self.hardware_id,
                                                     {**summary, "scheduling": self.sched_info,
                                                      "executor_scheduling": self.executor_sched, **values},
                                                     level, message))
        self.publish_status()

    def _check_loop(self) -> None:
        if self.loop_error is not None:
            raise SystemExit(f"{self.get_name()} loop failed: {self.loop_error!r}")

    def stop_loop(self, timeout: float = 2.0) -> None:
        """Stop the loop and wait for its thread (at most ``timeout`` s)."""
        if self._loop is not None:
            self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def destroy_io(self) -> None:
        self.io.destroy_node()

    # ------------------------------------------------------------------ hooks
    def tick(self, now: float, deadline: float) -> None:
        """One tick of the loop at wall time ``now`` (s); ``deadline`` is the loop's (monotonic)."""
        raise NotImplementedError

    def status(self) -> dict:
        """What ``/<node>/status`` says (JSON-serialisable)."""
        return {}

    def status_key(self, status: dict):
        """The part of ``status`` whose change publishes it (counters that move every tick left out)."""
        return status

    def diagnostics(self, now: float) -> tuple[dict, int, str]:
        """This node's ``/diagnostics`` values, level (0 ok, 1 warn, 2 error) and message."""
        return {}, 0, "ok"

    def on_status_change(self, status: dict) -> None:
        """Called once per published status change (log a stop, for instance)."""

    # ------------------------------------------------------------------ status
    def publish_status(self) -> bool:
        """Publish the latched status if its key changed; returns whether it was published."""
        status = self.status()
        key = self.status_key(status)
        with self._status_lock:
            if key == self._last_status_key:
                return False
            self._last_status_key = key
        self.pub_status.publish(String(data=json.dumps(status)))
        self.on_status_change(status)
        return True
