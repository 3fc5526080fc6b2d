"""calibration_node: hand-eye calibration of the camera's pose over the running graph.

Works the same on the robot (camera_node with ``camera.color_hz``, the xArm, the Allegro
driver) as on the twin (sim_node draws colour and carries the marker): the plain
:class:`calibration.live.LiveCalibration` does the work, this file only moves messages.

Subscribes: colour + CameraInfo (``camera.color_topic``, ``camera.color_info_topic``), depth +
CameraInfo, both controllers' measured joint states and status, and ``/camera_node/device``
(the camera's serial, which names the result).
Publishes: in ``planned`` mode, joint targets on ``control.teleop_topic`` at ``rates.policy_hz``
stamped one period ahead (only while both controllers are armed on the teleop source: arming
is the operator's action, or this node's on the twin with ``calibration.arm_controllers``; a
controller stopped by its watchdog pauses the run until it is armed again, and the move to
the current pose then starts over from where the arm is);
``/calibration_node/status`` (latched JSON: phase, poses seen, frames used and refused).

When every pose is done it solves, checks the result against depth, writes
``<calibration.out_dir>/<camera serial>_<UTC time>.yaml`` and the check's PNG beside it (the
``out`` parameter names the YAML instead), logs the check to Rerun when ``rrd`` names an .rrd
(or a running viewer's ``rerun+http://...`` url),
and exits 0. A controller that is e-stopped or faults ends a planned run with exit 1.

Parameters: ``config_file``, ``out``, ``rrd``, ``poses`` (0: ``calibration.poses``).
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String

from calibration.extrinsics import camera_pose_for
from calibration.handeye import CalibrationError
from calibration.live import LiveCalibration, StampedImage
from calibration.session import log_check, write_outputs
from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.errors import ConfigError
from robot_runtime.interfaces import CONTROLLERS, STATE_TOPICS, ControllerStatus, Mode
from robot_runtime.nodes.controller_arming import TwinControllerArmer
from robot_runtime.transforms import optical_pose_look_at

NAME = "calibration_node"


def camera_guess(cfg):
    """A rough camera pose for planning: the configured guess, else the current calibration (or the twin's)."""
    cal = cfg.calibration
    if cal.camera_guess_position:
        return optical_pose_look_at(cal.camera_guess_position, cal.camera_guess_look_at)
    return camera_pose_for(cfg)


def camera_serial(cfg, reported: str = "") -> str:
    """The name the result is filed under: the serial camera_node reported, else the configured one."""
    if cfg.camera.type == "twin":
        return "twin"
    if reported:
        return f"{cfg.camera.type}{reported}"
    return f"zed{cfg.camera.serial_number}" if getattr(cfg.camera, "serial_number", 0) else cfg.camera.type


class CalibrationNode(Node):
    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.out = self.declare_parameter("out", "").value
        self.rrd = self.declare_parameter("rrd", "").value
        poses = self.declare_parameter("poses", 0).value
        if poses:
            if not 6 <= poses <= 100:
                raise ConfigError(f"parameter 'poses' must be 6-100, not {poses}")
            cfg.calibration.poses = poses
        self.cfg, self.cal = cfg, cfg.calibration
        self.session = LiveCalibration(cfg, camera_guess(cfg) if self.cal.mode == "planned" else None)
        self.t0 = time.monotonic()
        self._color_K = None
        self.controllers: dict[str, ControllerStatus] = {}
        cam = cfg.camera
        log = self.get_logger()

        def subscribe(msg_type, topic, callback, qos):
            self.create_subscription(msg_type, topic, ros_io.guarded(callback, log, topic), qos)
        subscribe(CameraInfo, cam.color_info_topic, self._on_color_info, ros_io.IMAGE_QOS)
        subscribe(Image, cam.color_topic, self._on_color, ros_io.IMAGE_QOS)
        self.depth = ros_io.DepthInput(self, cam.depth_topic, cam.info_topic, log, on_frame=self._on_depth)
        subscribe(JointState, STATE_TOPICS["arm"], self._on_arm, ros_io.STATE_QOS)
        subscribe(JointState, STATE_TOPICS["hand"], self._on_hand, ros_io.STATE_QOS)
        self.reported_serial = ""
        subscribe(String, "/camera_node/device", self._on_device, ros_io.LATCHED_QOS)
        for name in CONTROLLERS:
            subscribe(String, f"/{name}/status", lambda m, n=name: self._on_status(n, m), ros_io.LATCHED_QOS)
        self.pub_targets = self.create_publisher(JointState, cfg.control.teleop_topic, ros_io.STATE_QOS)
        self.pub_status = self.create_publisher(String, f"/{NAME}/status", ros_io.LATCHED_QOS)
        self.armer = TwinControllerArmer(self, wanted=True) if self.cal.arm_controllers else None
        self.period = 1.0 / cfg.rates.policy_hz
        self._last_status: dict | None = None
        self._solver: threading.Thread | None = None
        self._solved: tuple | None = None
        self.create_timer(self.period, self._tick)
        self.get_logger().info(f"{self.cal.mode} calibration, {self.cal.poses} poses; waiting for "
                               f"{self.session.waiting_for}")

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_color_info(self, msg: CameraInfo) -> None:
        K = ros_io.usable_intrinsics(msg, self.get_logger(), self.cfg.camera.color_info_topic)
        if K is not None:
            self._color_K = K

    def _on_color(self, msg: Image) -> None:
        if self._color_K is not None:
            self.session.on_color(StampedImage(ros_io.color_from_msg(msg), self._color_K,
                                               ros_io.from_time_msg(msg.header.stamp)))

    def _on_depth(self, stamp: float, depth, K) -> None:
        self.session.on_depth(StampedImage(depth.copy(), K, stamp))

    def _on_arm(self, msg: JointState) -> None:
        q = ros_io.ordered_values(msg.name, msg.position, D.ARM_JOINTS, "position")
        self.session.on_arm(ros_io.from_time_msg(msg.header.stamp), q)

    def _on_hand(self, msg: JointState) -> None:
        self.session.on_hand(ros_io.ordered_values(msg.name, msg.position, D.HAND_JOINTS, "position"))

    def _on_device(self, msg: String) -> None:
        self.reported_serial = str(json.loads(msg.data).get("serial", ""))

    def _on_status(self, name: str, msg: String) -> None:
        self.controllers[name] = ControllerStatus.from_json(msg.data)

    # ------------------------------------------------------------------ loop
    def _controllers_ready(self) -> bool:
        return all(n in self.controllers and self.controllers[n].mode is Mode.ARMED and
                   self.controllers[n].source == "teleop" for n in CONTROLLERS)

    def _tick(self) -> None:
        if self.cal.mode == "planned" and self.session.moves is not None:
            # A stall of the joint-state stream (the watchdog) pauses the run until the controllers
            # are armed again; an e-stop or a device fault ends it.
            stopped = [f"{n}: {s.reason}" for n, s in self.controllers.items()
                       if s.mode is Mode.STOPPED and not s.stop.is_stall]
            if stopped:
                self._fail(f"a controller stopped during calibration ({'; '.join(stopped)})")
        now = self._now()
        drive = self.cal.mode == "planned" and self._controllers_ready()
        targets = self.session.tick(now, drive=drive)
        if targets is not None:
            self.pub_targets.publish(ros_io.joint_state_msg(D.ALL_JOINTS, now + self.period, targets))
        self._publish_status(drive)
        if self.session.finished and self._solver is None:
            # solve on a thread: the targets keep streaming (the arm holds home) meanwhile
            self._solver = threading.Thread(target=self._solve, name="calibration-solve", daemon=True)
            self._solver.start()
        if self._solved is not None:
            self._finish(*self._solved)

    def _publish_status(self, drive: bool) -> None:
        s = self.session
        status = {"mode": self.cal.mode, "poses_seen": len(s.sightings), "poses_wanted": self.cal.poses,
                  "waiting_for": s.waiting_for or ("the controllers to be armed on the teleop source"
                                                  if self.cal.mode == "planned" and not drive and s.moves is None
                                                  else ""),
                  "pose": None if s.moves is None else s.moves.index, "frames": dict(s.collector.counts)}
        if status != self._last_status:
            if self._last_status and status["poses_seen"] != self._last_status["poses_seen"]:
                self.get_logger().info(f"marker seen at {status['poses_seen']} poses")
            self._last_status = status
            self.pub_status.publish(String(data=json.dumps(status)))

    def _fail(self, why: str) -> None:
        self.get_logger().error(f"calibration failed: {why}")
        self.pub_status.publish(String(data=json.dumps({"mode": self.cal.mode, "failed": why})))
        raise SystemExit(1)

    def _solve(self) -> None:
        """Solve, check and write (on the solver thread); the outcome goes to ``_solved``.
        Anything that goes wrong is reported there: the node must never wait on a dead thread."""
        try:
            run = self.session.finish(time.monotonic() - self.t0)
            serial = camera_serial(self.cfg, self.reported_serial)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            out = Path(self.out) if self.out else Path(self.cal.out_dir) / f"{serial}_{stamp}.yaml"
            path = write_outputs(out, run, serial, self.session.depth_K, self.session.spec)
        except Exception as exc:  # noqa: BLE001 - handed to the node's thread, which fails with it
            self._solved = (None, None, exc if isinstance(exc, CalibrationError) else
                            CalibrationError(f"{type(exc).__name__}: {exc}"))
            return
        if self.rrd:   # the result is on disk already: a viewer that cannot be reached costs only the picture
            try:
                from robot_runtime.viz.rerun_log import RolloutLogger  # noqa: PLC0415

                sink = "connect" if self.rrd.startswith("rerun+") else "save"   # a viewer's url, or a file
                logger = RolloutLogger(sink, self.rrd, recording_id="calibration")
                log_check(logger, run, self.session.depth_K)
                logger.close()
            except Exception as exc:  # noqa: BLE001
                self.get_logger().warn(f"calibration written, but logging it to Rerun ({self.rrd}) failed: {exc}")
        self._solved = (run, path, None)

    def _finish(self, run, path, error) -> None:
        if error is not None:
            self._fail(str(error))
        r = run.result.summary()
        self.get_logger().info(
            f"calibrated from {r['inliers']} of {len(run.sightings)} poses (reprojection median "
            f"{r['reprojection_px']['median']:.2f} px); depth check median {run.check.median_abs_m * 1e3:.1f} mm on "
            f"{run.check.robot_pixels} robot pixels; wrote {path}")
        self.pub_status.publish(String(data=json.dumps({"mode": self.cal.mode, "done": str(path),
                                                        "residuals": r, "verification": run.check.to_dict()})))
        raise SystemExit(0)


def main(args=None) -> int:
    return ros_io.spin_ros_main(CalibrationNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
