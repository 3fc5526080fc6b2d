"""teleop_node: a teleop input -> 23 joint targets on ``control.teleop_topic``.

A deadline loop at ``teleop.rate_hz`` reads the input's newest sample, runs
:class:`robot_runtime.teleop.session.TeleopSession` (retargeting, IK, filter, speed
limit) and publishes the targets stamped for the next tick. The targets go through the
controllers' source switch and safety shield like the policy's (select the ``teleop``
source on both controllers). Before engage and while disengaged it publishes the held
target, so the robot stays still; an input silent for ``teleop.input_timeout_s`` while
engaged disengages.

Parameters: ``config_file``; ``timing_log`` (``.npz`` of (acquired, published, stamped-for)
per target made from a fresh sample, written at exit). Services (std_srvs/Trigger):
``~/engage``, ``~/disengage``. Topics: ``~/status`` (latched JSON), ``/diagnostics``.
On the twin it also reads ``/twin/object_poses`` and ``/twin/episode`` for the scripted expert.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.errors import RobotRuntimeError, TeleopError
from robot_runtime.interfaces import CONTROLLERS
from robot_runtime.nodes.controller_arming import TwinControllerArmer
from robot_runtime.interfaces import STATE_TOPICS
from robot_runtime.nodes.loop_node import LoopNode
from robot_runtime.teleop.factory import make_session, make_teleop_input
from robot_runtime.teleop.inputs import WorldView

NAME = "teleop_node"


class TeleopNode(LoopNode):
    hardware_id = "teleop"

    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.cfg, self.tcfg = cfg, cfg.teleop
        self.timing_log = self.declare_parameter("timing_log", "").value
        self.session = make_session(cfg)
        self.input = make_teleop_input(cfg, self.session.follower.model)
        self.input.open()
        self.period = 1.0 / self.tcfg.rate_hz
        self.sub_joints = {p: ros_io.PolledSubscription(self.io, JointState, t, ros_io.STATE_QOS)
                           for p, t in STATE_TOPICS.items()}
        self.sub_objects = ros_io.PolledSubscription(self.io, PoseArray, "/twin/object_poses", ros_io.STATE_QOS)
        self.create_subscription(String, "/twin/episode", ros_io.guarded(self._on_episode, self.get_logger(),
                                                                         "/twin/episode"), ros_io.LATCHED_QOS)
        self.pub_targets = self.io.create_publisher(JointState, cfg.control.teleop_topic, ros_io.STATE_QOS)
        self.create_service(Trigger, f"/{NAME}/engage", self._on_engage)
        self.create_service(Trigger, f"/{NAME}/disengage", self._on_disengage)
        self.world = WorldView()
        self._object_names: list[str] = []
        self._joints: dict[str, np.ndarray] = {}
        self._episode_t = 0.0    # when the twin's episode (task, objects) last changed
        self._objects_t = 0.0    # stamp of the newest object poses
        self._lock = threading.Lock()
        self._last_sample_t = 0.0
        self.log: list[tuple[float, float, float]] = []
        self.armer = None
        if self.tcfg.arm_controllers:
            for n in CONTROLLERS:   # teleop drives them: select the teleop source, then keep them armed
                client = self.create_client(Trigger, f"/{n}/select_teleop")
                client.wait_for_service(timeout_sec=10.0)
                client.call_async(Trigger.Request())
            self.armer = TwinControllerArmer(self, wanted=True)
        # Targets stop reaching the controllers if this loop is starved: on a loaded host their
        # watchdog latches a stop after control.latch_after_s, as it would for a dead operator.
        self.start_loop(self.tcfg.rate_hz, self.tcfg.realtime_priority, priority_key="teleop.realtime_priority")
        if self.tcfg.autoengage:
            self._on_engage(None, Trigger.Response())
        self.get_logger().info(f"teleop input {self.tcfg.input.type} at {self.tcfg.rate_hz:g} Hz -> "
                               f"{cfg.control.teleop_topic}; engage with /{NAME}/engage")

    def _on_episode(self, msg: String) -> None:
        info = json.loads(msg.data)
        task, active, objects = str(info["task"]), tuple(info["active"]), [str(o) for o in info["objects"]]
        with self._lock:
            self.world.task, self.world.active = task, active
            self._object_names = objects
            self._episode_t = time.time()

    def _take_inputs(self) -> None:
        for part, sub in self.sub_joints.items():
            m = sub.take_latest()
            if m is not None:
                self._joints[part] = np.asarray(m.position, float)
        if len(self._joints) == 2:
            self.world.q = np.concatenate([self._joints["arm"], self._joints["hand"]])
        m = self.sub_objects.take_latest()
        if m is not None and len(m.poses) == len(self._object_names):
            self._objects_t = ros_io.from_time_msg(m.header.stamp)
            self.world.objects = {n: (np.array([p.position.x, p.position.y, p.position.z]),
                                      np.array([p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z]))
                                  for n, p in zip(self._object_names, m.poses)}

    def tick(self, now: float, deadline: float) -> None:
        with self._lock:
            self._take_inputs()
            try:
                sample = self.input.read(now, self.world)
                targets = self.session.step(sample, self.world.q, now)
            except RobotRuntimeError as exc:
                self.session.disengage()
                self.get_logger().error(f"teleop input failed, disengaged: {exc}")
                sample, targets = None, self.session.holding
            if sample is not None:
                self._last_sample_t = now
            elif self.session.engaged and now - self._last_sample_t > self.tcfg.input_timeout_s \
                    and self.tcfg.input.type != "scripted":
                self.session.disengage()
                self.get_logger().warn(f"no input for {self.tcfg.input_timeout_s:g} s: disengaged, holding")
        if targets is not None:
            stamp_for = now + self.period
            self.pub_targets.publish(ros_io.joint_state_msg(D.ALL_JOINTS, stamp_for, targets))
            if sample is not None and self.timing_log:
                self.log.append((sample.t, time.time(), stamp_for))
        self.publish_status()

    def diagnostics(self, now: float) -> tuple[dict, int, str]:
        if self.timing_log and int(now) % 5 == 0:   # also written while running: a killed node keeps it
            self._save_timing()
        return {k: v for k, v in self.status().items() if not isinstance(v, dict)}, 0, "ok"

    def status(self) -> dict:
        return {**self.session.status(), "input": self.tcfg.input.type, **self.input.status()}

    def status_key(self, status: dict):
        return {k: v for k, v in status.items() if k not in ("samples", "frame", "frames", "detections",
                                                             "ik_position_error_m", "ik_rotation_error_rad")}

    def _on_engage(self, request, response):
        # The input prepares (the expert plans) outside the lock: the loop goes on publishing the
        # held targets, so the controllers' watchdog never sees the stream stop.
        try:
            with self._lock:
                if self.tcfg.input.type == "scripted" and self._objects_t <= self._episode_t:
                    raise TeleopError("waiting for object poses from the twin's new episode")
                world = replace(self.world, objects=dict(self.world.objects))
            self.input.prepare(world)
            with self._lock:
                self.input.on_engage(time.time(), world)
                response.message = self.session.engage()
                response.success = True
                self._last_sample_t = time.time()
        except RobotRuntimeError as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().info(f"engage: {response.message}")
        return response

    def _on_disengage(self, request, response):
        with self._lock:
            response.message = self.session.disengage()
        response.success = True
        self.get_logger().info(response.message)
        return response

    def close(self) -> None:
        self.stop_loop()
        self.input.close()
        if self.timing_log:
            self._save_timing()
        self.destroy_io()

    def _save_timing(self) -> None:
        path = Path(self.timing_log)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, samples=np.array(self.log).reshape(-1, 3))
        tmp.replace(path)


def main(args=None) -> int:
    return ros_io.spin_ros_main(TeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
