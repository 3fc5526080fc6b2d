"""sim_node: the MuJoCo twin of the lab cell, serving the same topics as the real drivers.

Publishes: arm joint states (``arm.state_topic``), Allegro joint states
(``<prefix>/joint_states``), depth (32FC1 m) and CameraInfo, ground-truth object poses
(``/twin/object_poses``, PoseArray in the base frame, names and task on the latched
``/twin/episode``), colour (rgb8) plus CameraInfo when ``camera.color_hz`` is set
(calibration), and statistics with the real-time factor on ``/diagnostics``.
Subscribes: arm servo targets (``arm.target_topic``) and Allegro torques
(``<prefix>/torque_cmd``, JointState effort). Service ``/twin/reset`` (Trigger) resets
to the ``task`` and ``seed`` parameters.
"""
from __future__ import annotations

import json

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Pose, PoseArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import TwinArmConfig, TwinCameraConfig, TwinHandConfig, load_config
from robot_runtime.control.loop import request_realtime
from robot_runtime.errors import ConfigError, TwinError
from robot_runtime.twin.scene import TASKS
from robot_runtime.twin.runner import TwinRunner
from robot_runtime.twin.sim import TwinSimulation

CAMERA_FRAME = "camera_depth_optical_frame"
BASE_FRAME = "link_base"


class SimNode(Node):
    publishes_images = True   # depth (and colour): a large shared-memory segment (ros_io.image_publisher_transport)

    def __init__(self):
        super().__init__("sim_node")
        path = self.declare_parameter("config_file", "").value
        cfg = load_config(path)
        task = self.declare_parameter("task", cfg.twin.task).value
        seed = self.declare_parameter("seed", cfg.twin.seed).value
        cfg.twin.task, cfg.twin.seed = task, seed
        self.add_on_set_parameters_callback(self._check_params)
        arm = cfg.arm if cfg.arm.type == "twin" else TwinArmConfig()
        hand = cfg.hand if cfg.hand.type == "twin" else TwinHandConfig()
        cam = cfg.camera if cfg.camera.type == "twin" else TwinCameraConfig()
        self.cam_model = cfg.twin.camera
        self.pub_arm = ros_io.JointStateWriter(self.create_publisher(JointState, arm.state_topic, ros_io.STATE_QOS),
                                               D.ARM_JOINTS)
        self.pub_hand = ros_io.JointStateWriter(
            self.create_publisher(JointState, f"{hand.topic_prefix}/joint_states", ros_io.STATE_QOS), D.HAND_JOINTS)
        self.pub_depth = self.create_publisher(Image, cam.depth_topic, ros_io.IMAGE_QOS)
        self.pub_info = self.create_publisher(CameraInfo, cam.info_topic, ros_io.IMAGE_QOS)
        if cam.color_hz > 0:
            self.pub_color = self.create_publisher(Image, cam.color_topic, ros_io.IMAGE_QOS)
            self.pub_color_info = self.create_publisher(CameraInfo, cam.color_info_topic, ros_io.IMAGE_QOS)
        self.pub_objects = self.create_publisher(PoseArray, "/twin/object_poses", ros_io.STATE_QOS)
        self.pub_episode = self.create_publisher(String, "/twin/episode", ros_io.LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", ros_io.STATE_QOS)
        # Commands arrive at 120 and 300 Hz: the physics loop takes them itself from
        # subscriptions on a node no executor spins (cheaper than a callback each).
        self.io = rclpy.create_node("sim_node_io", context=self.context, use_global_arguments=False)
        self.arm_in = ros_io.PolledSubscription(self.io, JointState, arm.target_topic, ros_io.COMMAND_QOS)
        self.hand_in = ros_io.PolledSubscription(self.io, JointState, f"{hand.topic_prefix}/torque_cmd",
                                                 ros_io.COMMAND_QOS)
        self.runner = TwinRunner(TwinSimulation(cfg.twin, cfg.robot), cfg.twin, self,
                                 stamp_clock=lambda: self.get_clock().now().nanoseconds * 1e-9,
                                 poll_inputs=self._take_commands,
                                 thread_setup=lambda: self._set_scheduling(cfg.twin.realtime_priority),
                                 color_hz=cam.color_hz)
        self.xarm_box = self.xarm_link = None
        if cfg.arm.type == "xarm":   # the real SDK talks to an emulated control box, the twin's arm behind it
            if not str(cfg.arm.ip).startswith("127."):
                raise ConfigError(f"the twin emulates an xArm control box on a loopback address only, not "
                                  f"{cfg.arm.ip!r}", key="arm.ip")
            from robot_runtime.twin.xarm_box import TwinArmLink, XArmBox  # noqa: PLC0415

            self.xarm_link = TwinArmLink(self.runner.command_arm)
            self.xarm_box = XArmBox(cfg.arm.ip, arm=self.xarm_link).start()
            self.get_logger().info(f"xArm control box emulated at {cfg.arm.ip} (ports 502, 30002)")
        self.create_service(Trigger, "/twin/reset", self._on_reset)
        self.create_timer(0.5, self._watch_runner)
        self.runner.start()
        self.get_logger().info(f"twin running: task {task}, seed {seed}, physics {cfg.twin.physics_hz:g} Hz, "
                               f"depth {self.cam_model.width}x{self.cam_model.height} at {self.cam_model.fps:g} Hz")

    def _set_scheduling(self, priority: int) -> None:
        self.get_logger().info(f"twin physics thread: {request_realtime(priority)}")

    # ---------------------------------------------------------------- inputs
    def _take_commands(self) -> None:
        msg = self.arm_in.take_latest()
        if msg is not None:
            self._on_arm_target(msg)
        msg = self.hand_in.take_latest()
        if msg is not None:
            self._on_hand_torque(msg)

    def _on_arm_target(self, msg: JointState) -> None:
        try:
            self.runner.command_arm(ros_io.ordered_values(msg.name, msg.position, D.ARM_JOINTS, "position"))
        except ValueError as exc:
            self.runner.rejected_commands += 1
            self.get_logger().warn(f"arm target rejected: {exc}", throttle_duration_sec=1.0)

    def _on_hand_torque(self, msg: JointState) -> None:
        try:
            self.runner.command_hand(ros_io.ordered_values(msg.name, msg.effort, D.HAND_JOINTS, "effort",
                                                           allow_unnamed=True))
        except ValueError as exc:
            self.runner.rejected_commands += 1
            self.get_logger().warn(f"hand torque rejected: {exc}", throttle_duration_sec=1.0)

    def _check_params(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "task" and p.value not in TASKS:
                return SetParametersResult(successful=False, reason=f"unknown task {p.value!r} (one of {list(TASKS)})")
            if p.name == "seed" and (not isinstance(p.value, int) or p.value < 0):
                return SetParametersResult(successful=False, reason="seed must be a non-negative integer")
        return SetParametersResult(successful=True)

    def _on_reset(self, request, response):
        task = self.get_parameter("task").value
        seed = self.get_parameter("seed").value
        try:
            self.runner.request_reset(task, seed)
            response.success = True
            response.message = json.dumps({"task": task, "seed": seed,
                                           "active": list(self.runner.sim.active_objects)})
        except TwinError as exc:
            response.success, response.message = False, str(exc)
        return response

    def _watch_runner(self) -> None:
        if self.runner.error is not None:
            self.get_logger().fatal(f"twin loop failed: {self.runner.error!r}")
            raise SystemExit(1)

    # ---------------------------------------------------------------- TwinSink
    def arm_state(self, sample, stamp):
        self.pub_arm.publish(stamp, sample.position, sample.velocity, sample.effort)
        if self.xarm_link is not None:   # on the physics thread: the twin's contacts are current
            self.xarm_link.on_state(sample.position, sample.velocity, self.runner.sim.robot_table_force())

    def hand_state(self, sample, stamp):
        self.pub_hand.publish(stamp, sample.position, sample.velocity, sample.effort)

    def depth(self, depth, K, stamp):
        self.pub_depth.publish(ros_io.depth_image_msg(depth, stamp, CAMERA_FRAME))
        self.pub_info.publish(ros_io.camera_info_msg(K, depth.shape[1], depth.shape[0], stamp, CAMERA_FRAME))

    def color(self, rgb, K, stamp):
        self.pub_color.publish(ros_io.color_image_msg(rgb, stamp, CAMERA_FRAME))
        self.pub_color_info.publish(ros_io.camera_info_msg(K, rgb.shape[1], rgb.shape[0], stamp, CAMERA_FRAME))

    def object_poses(self, poses, stamp):
        msg = PoseArray()
        msg.header.stamp = ros_io.to_time_msg(stamp)
        msg.header.frame_id = BASE_FRAME
        for p in poses.values():
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p.position)
            pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = (
                float(v) for v in p.quaternion)
            msg.poses.append(pose)
        self.pub_objects.publish(msg)

    def episode(self, task, seed, objects, active):
        self.pub_episode.publish(String(data=json.dumps({"task": task, "seed": seed, "objects": objects,
                                                         "active": active})))

    def statistics(self, stats, stamp):
        self.pub_diag.publish(ros_io.diagnostics_msg(stamp, "sim_node: twin", "mujoco_twin", stats))

    def close(self):
        self.runner.stop()
        if self.xarm_box is not None:
            self.xarm_box.close()
        self.io.destroy_node()


def main(args=None) -> int:
    return ros_io.spin_ros_main(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
