"""policy_node: the closed-loop policy at rates.policy_hz (20 Hz), with checkpoint hot-swap.

Each tick of its deadline loop takes the newest depth frame and the controllers' joint
states, runs :class:`policies.closed_loop.ClosedLoopPolicy`, and publishes the 23 joint
targets (``JointState``, stamped for the next tick) on ``control.policy_topic``.

Parameters: ``config_file``; ``checkpoint`` (set it to hot-swap:
``ros2 param set /policy_node checkpoint <folder>``; a checkpoint that fails its checks is
refused with the reason and the running one stays); ``timing_log`` (``.npz`` written at exit).
Services (std_srvs/Trigger): ``~/start_episode``, ``~/stop_episode``, ``~/reset_episode``,
``~/rollback``. Topics: ``~/status`` (latched JSON), ``/diagnostics`` (once a second).
"""
from __future__ import annotations

import gc
import json
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from calibration.extrinsics import camera_pose_for
from policies.closed_loop import (CheckpointSwapper, ClosedLoopPolicy, LatestInputs, LiveRobot, LoadedPolicy, TickLog,
                                  TickWindow)
from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.control.factory import TARGET_JOINTS
from robot_runtime.control.loop import DeadlineLoop, LoopStatistics, request_realtime, tighten_gil_switching
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.nodes.controller_arming import TwinControllerArmer
from robot_runtime.nodes.controller_shell import STATE_TOPICS

NAME = "policy_node"


class PolicyNode(Node):
    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.cfg, self.pcfg = cfg, cfg.policy
        path = self.declare_parameter("checkpoint", str(cfg.policy.checkpoint)).value
        self.timing_log = self.declare_parameter("timing_log", "").value
        self.live = LiveRobot(TARGET_JOINTS, D.ALL_LIMITS, cfg.rates.policy_hz, camera_pose_for(cfg))
        self.period = 1.0 / cfg.rates.policy_hz
        # Exported here if the checkpoint carries no ONNX files: no loop runs yet, and a child at
        # the lowest priority (as a hot-swap uses) starves on a busy machine (the graph's first
        # arming waited on it).
        self.policy = ClosedLoopPolicy(
            LoadedPolicy.load(path, self.live, self.pcfg.runner, self.pcfg.warmup_steps), self.period,
            self.pcfg.max_frame_age_s, self.pcfg.max_state_age_s)
        # The loop's own node: polled inputs and the loop's publishers; never spun.
        self.io = rclpy.create_node(f"{NAME}_io", context=self.context, use_global_arguments=False)
        self.sub_depth = ros_io.PolledSubscription(self.io, Image, cfg.camera.depth_topic, ros_io.IMAGE_QOS)
        self.sub_info = ros_io.PolledSubscription(self.io, CameraInfo, cfg.camera.info_topic, ros_io.IMAGE_QOS)
        self.sub_joints = {p: ros_io.PolledSubscription(self.io, JointState, t, ros_io.STATE_QOS)
                           for p, t in STATE_TOPICS.items()}
        self.pub_targets = self.io.create_publisher(JointState, cfg.control.policy_topic, ros_io.STATE_QOS)
        self.pub_diag = self.io.create_publisher(DiagnosticArray, "/diagnostics", ros_io.STATE_QOS)
        self.pub_status = self.create_publisher(String, f"/{NAME}/status", ros_io.LATCHED_QOS)
        for name, fn in (("start_episode", self.policy.start), ("stop_episode", self.policy.stop),
                         ("reset_episode", self.policy.reset)):
            self.create_service(Trigger, f"/{NAME}/{name}", lambda req, res, fn=fn, n=name: self._episode(fn, n, res))
        self.create_service(Trigger, f"/{NAME}/rollback", self._on_rollback)
        self.armer = TwinControllerArmer(self, wanted=False) if self.pcfg.arm_controllers else None
        self._internal_set = False
        self.swapper = CheckpointSwapper(self.policy, self.live, self.pcfg.runner, self.pcfg.warmup_steps)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.inputs = LatestInputs()
        self.tick_log = TickLog() if self.timing_log else None
        self.last_skip = ""
        self.stats = LoopStatistics(self.period)
        self.loop_error: BaseException | None = None
        self.sched_info = "starting"
        self._next_diag = 0.0
        self.window = TickWindow()
        self._status_lock = threading.Lock()
        self._last_status = None
        self.policy.ticking = True
        self._loop = DeadlineLoop(cfg.rates.policy_hz, self._on_deadline, spin_s=cfg.control.spin_us * 1e-6,
                                  stats=self.stats)
        self._thread = threading.Thread(target=self._run_loop, name="policy-loop", daemon=True)
        self._thread.start()
        self.create_timer(1.0, self._check_loop)
        if self.pcfg.autostart:
            self._episode(self.policy.start, "start_episode", Trigger.Response())
        self.get_logger().info(f"policy {self.policy.policy.name} ({self.pcfg.runner}) at "
                               f"{cfg.rates.policy_hz:g} Hz -> {cfg.control.policy_topic}")

    # ------------------------------------------------------------------ loop
    def _run_loop(self) -> None:
        self.sched_info = request_realtime(self.pcfg.realtime_priority) if self.pcfg.realtime_priority else \
            "SCHED_OTHER (policy.realtime_priority 0)"
        tighten_gil_switching()
        gc.collect()
        gc.freeze()
        try:
            self._loop.run()
        except BaseException as exc:  # reported on the log; the node then exits
            self.loop_error = exc
            self.get_logger().fatal(f"policy loop failed: {exc!r}")

    def _on_deadline(self, deadline: float) -> None:
        now = time.time()
        self._take_inputs()
        res = self.policy.tick(now, self.inputs.frame, self.inputs.joints(), stamp_for=now + self.period)
        published_t = None
        if res.q is not None:
            self.pub_targets.publish(ros_io.joint_state_msg(TARGET_JOINTS, res.stamp_for, res.q))
            published_t = time.time()
        elif res.skip != "idle" and res.detail != self.last_skip:
            self.get_logger().warn(f"no action this tick ({res.skip}): {res.detail}", throttle_duration_sec=1.0)
        self.last_skip = res.detail if res.skip else ""
        if self.tick_log is not None:
            self.tick_log.record(res, published_t)
        self.window.add(res)
        if now >= self._next_diag:
            self._next_diag = now + 1.0
            self._publish_diagnostics(now)

    def _take_inputs(self) -> None:
        info = self.sub_info.take_latest()
        K = None if info is None else ros_io.usable_intrinsics(info, self.get_logger(), self.sub_info.topic)
        if K is not None:
            self.inputs.K = K
        msg = self.sub_depth.take_latest()
        if msg is not None:
            self.inputs.on_depth(ros_io.from_time_msg(msg.header.stamp), ros_io.depth_from_msg(msg))
        for part, sub in self.sub_joints.items():
            m = sub.take_latest()
            if m is not None:
                self.inputs.on_joints(part, ros_io.from_time_msg(m.header.stamp), m.position)

    # ------------------------------------------------------------------ services and parameters
    def _episode(self, fn, name: str, response):
        if self.armer is not None and name in ("start_episode", "stop_episode"):
            self.armer.wanted = name == "start_episode"
        response.message = fn()
        response.success = True
        self.get_logger().info(response.message)
        self._publish_status()
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name != "checkpoint" or self._internal_set:
                continue
            try:
                msg = self.swapper.swap(p.value)
            except RobotRuntimeError as exc:
                self.get_logger().error(f"hot-swap refused, {self.policy.policy.name} keeps running: {exc}")
                self._publish_status()
                return SetParametersResult(successful=False, reason=str(exc))
            self.get_logger().info(f"hot-swap: {msg}")
            self._publish_status()
        return SetParametersResult(successful=True)

    def _on_rollback(self, request, response):
        try:
            response.message = self.swapper.rollback()
            response.success = True
            self._internal_set = True
            try:
                self.set_parameters([Parameter("checkpoint", value=str(self.policy.policy.checkpoint.path))])
            finally:
                self._internal_set = False
        except RobotRuntimeError as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().info(f"rollback: {response.message}")
        self._publish_status()
        return response

    # ------------------------------------------------------------------ reporting
    def _status(self) -> dict:
        return {**self.policy.status(), "runner": self.pcfg.runner, "last_swap": self.swapper.last,
                "last_skip": self.last_skip, "loop": self.stats.summary()}

    def _publish_status(self) -> None:
        status = self._status()
        key = {k: v for k, v in status.items() if k not in ("loop", "steps", "counts")}
        with self._status_lock:
            if key == self._last_status:
                return
            self._last_status = key
        self.pub_status.publish(String(data=json.dumps(status)))

    def _publish_diagnostics(self, now: float) -> None:
        st = self.policy.status()
        values = {**self.stats.summary(), **self.window.summary(), "scheduling": self.sched_info, "checkpoint": st["checkpoint"],
                  "episode": st["episode"], "running": st["running"],
                  **{f"ticks_{k}": v for k, v in st["counts"].items()}}
        level = 1 if self.last_skip else 0
        self.pub_diag.publish(ros_io.diagnostics_msg(now, f"{NAME}: loop", "policy", values, level,
                                                     self.last_skip or f"running {st['checkpoint']}"))
        self._publish_status()

    def _check_loop(self) -> None:
        if self.loop_error is not None:
            raise SystemExit(f"policy loop failed: {self.loop_error!r}")

    def close(self) -> None:
        self.swapper.close()
        self._loop.stop()
        self._thread.join(2.0)
        if self.tick_log is not None:
            self.tick_log.save(self.timing_log, misses=self.stats.misses, overruns=self.stats.overruns,
                               ticks=self.stats.ticks)


def main(args=None) -> int:
    return ros_io.spin_ros_main(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
