"""viz_node: the running graph, live in Rerun. Its own process, never inside a control loop.

Subscribes to the depth frames and camera info, both controllers' joint states, the policy's
targets, ``/diagnostics`` (policy latency and frame age, controller loops, shield
interventions) and the policy's, recorder's and twin's status topics (episode start, stop,
success); a timer at ``rate_hz`` logs the newest of each through
:class:`robot_runtime.viz.live.LiveRolloutView` (no ROS in it).

Parameters (defaults from the config's ``viz`` section): ``config_file``; ``sink`` ('spawn' a
viewer, 'connect' to one, 'save' an .rrd);
``target`` (the .rrd path, default ``runs/viz/<time>.rrd``, or the viewer's gRPC url);
``rate_hz`` (20, the policy's rate: joints, targets and timing every update); ``heavy_hz``
(10: depth, cloud and robot pose at most this often); ``depth_stride`` (2: the depth image is
logged at half resolution, in mm); ``budget`` (share of wall time logging may take before
depth, cloud and robot pose are thinned further); ``nice`` (10: added to every thread's niceness
at start-up, so on a machine without real-time scheduling the control loops still come
first). Topic: ``~/status`` (JSON once a second:
updates, achieved rate, thinning, sink).
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from calibration.extrinsics import camera_pose_for
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.control.loop import lower_priority
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.interfaces import STATE_TOPICS
from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualPreprocessor, VisualSpec
from robot_runtime.viz.live import LiveRolloutView
from robot_runtime.viz.rerun_log import LogThrottle, RolloutLogger

NAME = "viz_node"
STATUS_TOPICS = ("/policy_node/status", "/recorder_node/status", "/twin/episode")


def display_cloud(cfg) -> VisualSpec:
    """The cloud shown: the policy's own input when it takes points, else a denser display crop."""
    if cfg.policy.checkpoint:
        try:
            meta = json.loads((Path(cfg.policy.checkpoint) / "policy.json").read_text())
            visual = VisualSpec.from_dict(meta["schema"]["visual"])
            if visual.kind == "pointcloud":
                return visual
        except (OSError, ValueError, KeyError, RobotRuntimeError):   # the viewer still shows a cloud
            pass
    return VisualSpec("pointcloud", points=PointCloudPreprocess(num_points=1500, stride=4,
                                                                table_z=cfg.control.workspace.table_z))


class VizNode(Node):
    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        v = cfg.viz
        sink = self.declare_parameter("sink", v.sink).value
        target = self.declare_parameter("target", v.target).value
        if sink == "save" and not target:
            target = str(Path("runs") / "viz" / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.rrd")
        self.rate = float(self.declare_parameter("rate_hz", v.rate_hz).value)
        budget = float(self.declare_parameter("budget", v.budget).value)
        heavy_hz = float(self.declare_parameter("heavy_hz", v.heavy_hz).value)
        depth_stride = int(self.declare_parameter("depth_stride", v.depth_stride).value)
        self.sink, self.target = sink, target
        self.priority = lower_priority(int(self.declare_parameter("nice", v.nice).value))  # before Rerun's threads start
        T = camera_pose_for(cfg)
        self.logger_rr = RolloutLogger(sink, target, recording_id=f"live-{int(time.time())}", depth_stride=depth_stride,
                                       throttle=LogThrottle(budget=budget,
                                                            min_every=max(1, round(self.rate / max(heavy_hz, 1e-3)))))
        self.view = LiveRolloutView(self.logger_rr, VisualPreprocessor(display_cloud(cfg), T), T)
        self.depth = ros_io.DepthInput(self, cfg.camera.depth_topic, cfg.camera.info_topic, self.get_logger(),
                                       on_frame=self.view.on_depth)
        for part, topic in STATE_TOPICS.items():
            self.create_subscription(JointState, topic, lambda m, p=part: self.view.on_joints(p, m.position),
                                     ros_io.STATE_QOS)
        self.create_subscription(JointState, cfg.control.policy_topic, lambda m: self.view.on_target(m.position),
                                 ros_io.STATE_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, ros_io.STATE_QOS)
        self._last_status: dict[str, str] = {}
        for topic in STATUS_TOPICS:
            self.create_subscription(String, topic, lambda m, t=topic: self._on_status(t, m), ros_io.LATCHED_QOS)
        self.pub_status = self.create_publisher(String, f"/{NAME}/status", ros_io.LATCHED_QOS)
        self.throttle_note = ""
        self._t0, self._n0 = time.monotonic(), 0
        self.create_timer(1.0 / self.rate, self._on_timer)
        self.create_timer(1.0, self._publish_status)
        self.get_logger().info(f"logging to Rerun ({sink} {target}) at {self.rate:g} Hz, {self.priority}")

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            self.view.on_diagnostics(st.name, {kv.key: kv.value for kv in st.values})

    def _on_status(self, topic: str, msg: String) -> None:
        """Episode events: the parts of a status that say what the episode is doing."""
        try:
            st = json.loads(msg.data)
        except ValueError:
            st = {"status": msg.data}
        keep = ("episode", "running", "checkpoint", "recording", "last_saved", "last_success", "task", "seed", "error")
        text = ", ".join(f"{k}={st[k]}" for k in keep if isinstance(st, dict) and k in st)
        if text and self._last_status.get(topic) != text:
            self._last_status[topic] = text
            self.view.on_event(f"{topic}: {text}", "WARN" if isinstance(st, dict) and st.get("error") else "INFO")

    def _on_timer(self) -> None:
        msg = self.view.update(time.time())
        if msg:
            self.throttle_note = msg
            self.get_logger().warn(msg)

    def _publish_status(self) -> None:
        now = time.monotonic()
        n = self.view.counts.updates
        rate = (n - self._n0) / max(now - self._t0, 1e-9)
        self._t0, self._n0 = now, n
        th = self.logger_rr.throttle
        self.pub_status.publish(String(data=json.dumps({
            "updates": n, "rate_hz": round(rate, 2), "heavy": self.view.counts.heavy, "heavy_every": th.every,
            "throttle": self.throttle_note, "sink": self.sink, "target": self.target, "priority": self.priority})))

    def close(self) -> None:
        self.logger_rr.close()


def main(args=None) -> int:
    return ros_io.spin_ros_main(VizNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
