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

import threading
import time
from pathlib import Path

from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from calibration.extrinsics import camera_pose_for
from policies.closed_loop import (CheckpointSwapper, ClosedLoopPolicy, LatestInputs, LiveRobot, LoadedPolicy, TickLog,
                                  TickWindow)
from policies.errors import PolicyError
from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.nodes.controller_arming import TwinControllerArmer
from robot_runtime.interfaces import STATE_TOPICS
from robot_runtime.nodes.loop_node import LoopNode

NAME = "policy_node"


class PolicyNode(LoopNode):
    hardware_id = "policy"
    #: A hot-swap loads in the parameter callback (up to an ONNX export); the services, the
    #: arming and the loop check are in a callback group of their own, served by a second
    #: executor thread meanwhile (stop_episode must answer during a swap).
    executor_threads = 2

    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.cfg, self.pcfg = cfg, cfg.policy
        path = self.declare_parameter("checkpoint", str(cfg.policy.checkpoint)).value
        self.timing_log = self.declare_parameter("timing_log", "").value
        self.live = LiveRobot(D.ALL_JOINTS, D.ALL_LIMITS, cfg.rates.policy_hz, camera_pose_for(cfg))
        self.period = 1.0 / cfg.rates.policy_hz
        # Exported here if the checkpoint carries no ONNX files: no loop runs yet, and a child at
        # the lowest priority (as a hot-swap uses) starves on a busy machine (the graph's first
        # arming waited on it).
        self.policy = ClosedLoopPolicy(
            LoadedPolicy.load(path, self.live, self.pcfg.runner, self.pcfg.warmup_steps), self.period,
            self.pcfg.max_frame_age_s, self.pcfg.max_state_age_s)
        self.depth = ros_io.DepthInput(self.io, cfg.camera.depth_topic, cfg.camera.info_topic, self.get_logger())
        self.sub_joints = {p: ros_io.PolledSubscription(self.io, JointState, t, ros_io.STATE_QOS)
                           for p, t in STATE_TOPICS.items()}
        self.pub_targets = self.io.create_publisher(JointState, cfg.control.policy_topic, ros_io.STATE_QOS)
        group = self.services_group = MutuallyExclusiveCallbackGroup()
        for name, fn in (("start_episode", self.policy.start), ("stop_episode", self.policy.stop),
                         ("reset_episode", self.policy.reset)):
            self.create_service(Trigger, f"/{NAME}/{name}", lambda req, res, fn=fn, n=name: self._episode(fn, n, res),
                                callback_group=group)
        self.create_service(Trigger, f"/{NAME}/rollback", self._on_rollback, callback_group=group)
        self.armer = TwinControllerArmer(self, wanted=False, callback_group=group) if self.pcfg.arm_controllers \
            else None
        self._internal = threading.local()   # set while rollback sets the parameter (on its own thread)
        # A swap loads only from the finetune folder or the configured checkpoint's (the parameter
        # is any DDS peer's to set).
        roots = [self.pcfg.finetune_dir] + ([Path(self.pcfg.checkpoint).parent] if self.pcfg.checkpoint else [])
        self.swapper = CheckpointSwapper(self.policy, self.live, self.pcfg.runner, self.pcfg.warmup_steps,
                                         roots=roots)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.inputs = LatestInputs()
        self.tick_log = TickLog() if self.timing_log else None
        self.last_skip = ""
        self.window = TickWindow()
        self.policy.ticking = True
        self.start_loop(cfg.rates.policy_hz, self.pcfg.realtime_priority, cfg.control.spin_us * 1e-6,
                        "policy.realtime_priority",
                        newest_frame=self._newest_frame if self.pcfg.tick_lock == "camera" else None)
        if self.pcfg.autostart:
            self._episode(self.policy.start, "start_episode", Trigger.Response())
        self.get_logger().info(f"policy {self.policy.policy.name} ({self.pcfg.runner}) at "
                               f"{cfg.rates.policy_hz:g} Hz -> {cfg.control.policy_topic}")

    # ------------------------------------------------------------------ loop
    def tick(self, now: float, deadline: float) -> None:
        self._take_inputs()
        res = self.policy.tick(now, self.inputs.frame, self.inputs.joints(), stamp_for=now + self.period)
        published_t = None
        if res.q is not None:
            self.pub_targets.publish(ros_io.joint_state_msg(D.ALL_JOINTS, res.stamp_for, res.q))
            published_t = time.time()
        elif res.skip != "idle" and res.detail != self.last_skip:
            self.get_logger().warn(f"no action this tick ({res.skip}): {res.detail}", throttle_duration_sec=1.0)
        self.last_skip = res.detail if res.skip else ""
        if self.tick_log is not None:
            self.tick_log.record(res, published_t)
        self.window.add(res)

    def _newest_frame(self) -> float | None:
        """Take the inputs; the newest frame's stamp (s), for the camera-locked grid."""
        self._take_inputs()
        return None if self.inputs.frame is None else self.inputs.frame.t

    def _take_inputs(self) -> None:
        frame = self.depth.take_latest()
        if frame is not None:
            self.inputs.on_depth(*frame)
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
        self.publish_status()
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name != "checkpoint" or getattr(self._internal, "set", False):
                continue
            try:
                if not isinstance(p.value, str) or not p.value:
                    raise PolicyError(f"parameter 'checkpoint' must be a checkpoint folder, not {p.value!r}")
                msg = self.swapper.swap(p.value)
            except Exception as exc:  # noqa: BLE001 - whatever a swap raises, the running policy stays
                why = str(exc) if isinstance(exc, RobotRuntimeError) else f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"hot-swap refused, {self.policy.policy.name} keeps running: {why}")
                self.publish_status()
                return SetParametersResult(successful=False, reason=why)
            self.get_logger().info(f"hot-swap: {msg}")
            self.publish_status()
        return SetParametersResult(successful=True)

    def _on_rollback(self, request, response):
        try:
            response.message = self.swapper.rollback()
            response.success = True
            self._internal.set = True
            try:
                self.set_parameters([Parameter("checkpoint", value=str(self.policy.policy.checkpoint.path))])
            finally:
                self._internal.set = False
        except RobotRuntimeError as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().info(f"rollback: {response.message}")
        self.publish_status()
        return response

    # ------------------------------------------------------------------ reporting
    def status(self) -> dict:
        return {**self.policy.status(), "runner": self.pcfg.runner, "last_swap": self.swapper.last,
                "last_skip": self.last_skip, "depth_dropped": dict(self.depth.dropped),
                "loop": self.stats.summary()}

    def status_key(self, status: dict):
        return {k: v for k, v in status.items() if k not in ("loop", "steps", "counts", "depth_dropped")}

    def diagnostics(self, now: float) -> tuple[dict, int, str]:
        st = self.policy.status()
        grid = self.frame_grid
        if grid is not None:
            cam = f" ({1.0 / grid.camera_period:.0f} Hz camera)" if grid.camera_period else ""
            values_grid = {"tick_grid": ("locked to camera" if grid.locked else "free") + cam,
                           "grid_on_frame": grid.ticks_on_frame, "grid_free": grid.ticks_free}
        else:
            values_grid = {"tick_grid": "free (policy.tick_lock: free)"}
        values = {**self.window.summary(), **values_grid, "checkpoint": st["checkpoint"], "episode": st["episode"],
                  "running": st["running"], **{f"ticks_{k}": v for k, v in st["counts"].items()},
                  **{f"depth_dropped_{k}": v for k, v in self.depth.dropped.items()},
                  **{f"joints_refused_{k}": v for k, v in self.inputs.refused_joints.items()}}
        return values, 1 if self.last_skip else 0, self.last_skip or f"running {st['checkpoint']}"

    def close(self) -> None:
        self.swapper.close()
        self.stop_loop()
        if self.tick_log is not None:
            self.tick_log.save(self.timing_log, misses=self.stats.misses, overruns=self.stats.overruns,
                               ticks=self.stats.ticks)


def main(args=None) -> int:
    return ros_io.spin_ros_main(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
