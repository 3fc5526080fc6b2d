"""The ROS shell shared by arm_controller_node and hand_controller_node.

Declares parameters, topics and services, and runs the plain controller
(:mod:`robot_runtime.control.controller`) on a deadline loop thread of its own
(SCHED_FIFO when the machine allows it). High-rate inputs (device states, the other
controller's states, targets) are subscriptions on a second node that no executor
spins: at the start of each tick the loop takes what has arrived (targets are validated
into the controller's buffers, states into latest-value slots). The executor spins the
main node for services and a 1 Hz check that the loop is alive, so it never competes
with the loop for the GIL at message rate.

Topics (``<n>`` is the node name, ``arm_controller_node`` or ``hand_controller_node``):

- in: ``control.policy_topic`` / ``control.teleop_topic`` (JointState, 23 named joints,
  stamped for the time each target is for); the other controller's ``/<other>/joint_states``
  (for the workspace check);
- out, every tick up to ``control.state_publish_hz`` (every tick of the 120 Hz arm, every third
  of the 300 Hz hand): ``/<n>/joint_states`` (measured, stamped at acquisition) and
  ``/<n>/command`` (what was sent: position, velocity, and effort for the hand);
- ``/<n>/status`` (latched JSON: mode, reason, source, target freshness, faults), on change;
- ``/diagnostics`` once a second (from the loop thread): loop rate, wake-up lateness p50/p99/max, misses,
  overruns, and every shield intervention by reason.

Services (std_srvs/Trigger): ``/<n>/arm``, ``/<n>/estop``, ``/<n>/select_policy``,
``/<n>/select_teleop``.

Parameters: ``config_file``; ``scheduling`` (``deadline``, or ``ros_timer`` to run the
same tick from a plain rclpy timer, for the benchmark's comparison); ``timing_log`` (a
``.npz`` path that receives every tick's lateness when the node stops, and for each target
taken its stamp and the tick that first commanded from it: ``target_stamp``, ``pickup_t``, s).
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import ros_io
from robot_runtime.config import RuntimeConfig, load_config
from robot_runtime.control.controller import SOURCES, JointController, Mode
from robot_runtime.control.factory import make_arm_controller, make_hand_controller
from robot_runtime.control.targets import TargetRejected
from robot_runtime.devices.base import make_device
from robot_runtime.errors import ConfigError, DeviceError
from robot_runtime.interfaces import COMMAND_TOPICS, STATE_TOPICS
from robot_runtime.nodes.loop_node import LoopNode



#: Per part: its loop rate from the config, and the builder of its plain controller.
PARTS: dict[str, tuple[Callable[[RuntimeConfig], float], Callable[..., JointController]]] = {
    "arm": (lambda cfg: cfg.rates.arm_hz, make_arm_controller),
    "hand": (lambda cfg: cfg.rates.hand_hz, make_hand_controller),
}


class ControllerNode(LoopNode):
    """The controller node for ``part`` ('arm' or 'hand'), named ``<part>_controller_node``."""

    def __init__(self, part: str):
        node_name = f"{part}_controller_node"
        super().__init__(node_name)
        self.part = self.hardware_id = part
        rate_of, build = PARTS[part]
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.scheduling = self.declare_parameter("scheduling", "deadline").value
        if self.scheduling not in ("deadline", "ros_timer"):
            raise ConfigError(f"parameter 'scheduling' must be 'deadline' or 'ros_timer', not {self.scheduling!r}")
        self.timing_log = self.declare_parameter("timing_log", "").value
        self._pickups: list[tuple[float, float]] = []
        self.cfg, self.rate = cfg, rate_of(cfg)
        self.device = make_device(self.part, getattr(cfg, self.part), node=self.io)
        self.device.connect()
        self.controller = build(cfg, self.device)
        ns = f"/{node_name}"
        names = self.controller.joint_names
        self.pub_state = ros_io.JointStateWriter(
            self.io.create_publisher(JointState, STATE_TOPICS[self.part], ros_io.STATE_QOS), names)
        self.pub_command = ros_io.JointStateWriter(
            self.io.create_publisher(JointState, COMMAND_TOPICS[self.part], ros_io.STATE_QOS), names)
        # republish every k-th tick: at most control.state_publish_hz
        self.publish_every = max(1, round(self.rate / cfg.control.state_publish_hz))
        topics = {"policy": cfg.control.policy_topic, "teleop": cfg.control.teleop_topic}
        self.targets = {s: ros_io.PolledSubscription(self.io, JointState, topics[s], ros_io.STATE_QOS)
                        for s in SOURCES}
        other = "hand" if self.part == "arm" else "arm"
        self.context_sub = ros_io.PolledSubscription(self.io, JointState, STATE_TOPICS[other], ros_io.STATE_QOS)
        if getattr(cfg, self.part).type == "twin":
            # The twin's reset puts the robot at home at once: hold it there (JointController.rehold).
            self.create_subscription(String, "/twin/episode", ros_io.guarded(
                self._on_twin_episode, self.get_logger(), "/twin/episode"), ros_io.LATCHED_QOS)
        self.create_service(Trigger, f"{ns}/arm", self._on_arm)
        self.create_service(Trigger, f"{ns}/estop", self._on_estop)
        for source in SOURCES:
            self.create_service(Trigger, f"{ns}/select_{source}", partial(self._on_select, source))
        deadline = self.scheduling == "deadline"
        self.start_loop(self.rate, cfg.control.realtime_priority, cfg.control.spin_us * 1e-6,
                        "control.realtime_priority", keep_all=bool(self.timing_log), run=deadline)
        if not deadline:
            self.sched_info = "rclpy timer"
            self._timer_expected: float | None = None
            self._timer = self.create_timer(1.0 / self.rate, self._on_timer)
        self.get_logger().info(f"{self.part} controller at {self.rate:g} Hz ({self.scheduling}), disarmed; "
                               f"source {self.controller.source}; arm with {ns}/arm")

    def _on_twin_episode(self, msg) -> None:
        self.controller.rehold(time.time())

    # ------------------------------------------------------------------ loop
    def tick(self, now: float, deadline: float) -> None:
        self._tick(now)

    def _on_timer(self) -> None:
        t = time.time()
        if self._timer_expected is not None:
            late = t - self._timer_expected
            self.stats.record(t, late, 0.0)
            behind = int(late // (1.0 / self.rate))
            self.stats.overruns += max(0, behind)
        self._tick(t)
        self.after_tick(t)
        self._timer_expected = time.time() + self._timer.time_until_next_call() * 1e-9

    def _tick(self, now: float) -> None:
        self._take_inputs(now)
        out = self.controller.tick(now)
        if self.controller.ticks % self.publish_every == 0:
            m = self.controller.last_measured
            if m is not None:
                self.pub_state.publish(m.t, m.position, m.velocity, m.effort)
            if out.sent:
                self.pub_command.publish(now, out.q, out.v, getattr(out, "torque", None))
        self.publish_status()

    def _take_inputs(self, now: float) -> None:
        for source, sub in self.targets.items():
            for msg in sub.take_all():
                try:
                    stamp = ros_io.from_time_msg(msg.header.stamp)
                    self.controller.on_target(source, msg.name, msg.position, stamp, now)
                    if self.timing_log:
                        self._pickups.append((stamp, now))   # this tick's command is the first from it
                except TargetRejected as exc:
                    self.get_logger().warn(f"{source} target rejected ({exc.reason}): {exc}",
                                           throttle_duration_sec=1.0)
        ctx = self.context_sub.take_latest()
        if ctx is not None and not self.controller.set_context(ctx.position):
            self.get_logger().warn(f"{STATE_TOPICS['hand' if self.part == 'arm' else 'arm']}: joints refused "
                                   f"(not finite, or another count); the last good ones are kept",
                                   throttle_duration_sec=1.0)

    def status(self) -> dict:
        return self.controller.status()

    def on_status_change(self, status: dict) -> None:
        if status["mode"] == Mode.STOPPED.value:
            self.get_logger().warn(f"{self.part} stopped: {status['reason']}")

    # ------------------------------------------------------------------ services

    def _on_arm(self, request, response):
        try:
            response.message = self.controller.arm(time.time())
            response.success = True
            self.get_logger().info(response.message)
        except DeviceError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"arming refused: {exc}")
        return response

    def _on_estop(self, request, response):
        self.controller.estop("e-stop service")
        ticked = self.controller.wait_for_tick(0.2)
        if not ticked and self.part == "arm":  # the loop is not running: stop the arm from here
            self.device.stop()
        response.success = True
        response.message = f"{self.part} holding; stopped until re-armed"
        self.get_logger().warn(f"e-stop: {response.message}")
        return response

    def _on_select(self, source: str, request, response):
        response.message = self.controller.select_source(source, time.time())
        response.success = True
        self.get_logger().info(response.message)
        return response

    def diagnostics(self, now: float) -> tuple[dict, int, str]:
        mode = self.controller.mode
        level = 0 if mode is Mode.ARMED else (2 if self.controller.faults and mode is Mode.STOPPED else 1)
        values = {**self.controller.diagnostics(), "device_rejected_states": int(self.device.rejected_states)}
        return values, level, self.controller.reason or f"armed, following {self.controller.source}"

    def close(self) -> None:
        self.stop_loop()
        if self.timing_log:
            path = Path(self.timing_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            pick = np.asarray(self._pickups, float).reshape(-1, 2)
            np.savez(path, lateness_ms=np.asarray(self.stats.all_lateness_ms), rate_hz=self.rate,
                     overruns=self.stats.overruns, misses=self.stats.misses, scheduling=self.sched_info,
                     target_stamp=pick[:, 0], pickup_t=pick[:, 1])
        try:
            if self.part == "arm" and self.controller.mode is Mode.ARMED:
                self.device.stop()
            self.device.disconnect()
        except DeviceError as exc:
            self.get_logger().error(f"{self.part} shutdown: {exc}")
        self.destroy_io()
