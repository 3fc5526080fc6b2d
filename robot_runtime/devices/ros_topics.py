"""Backends that talk to a device over ROS topics: the twin (sim_node) and the Allegro driver.

The twin serves the same topic shapes as the real drivers, so the Allegro hand's
``twin`` and ``allegro_ros`` backends are one class. Each backend attaches its
subscriptions to the rclpy node it is given; callbacks only validate and drop the
message into a latest-value slot.
"""
from __future__ import annotations

import threading

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.devices.base import ArmDevice, DepthCamera, DepthFrame, HandDevice, JointSample
from robot_runtime.errors import DeviceError


class _JointTopics:
    def __init__(self, node, names, state_topic: str, command_topic: str, timeout_s: float):
        self.node, self.names, self.timeout_s = node, tuple(names), timeout_s
        self.state_topic, self.command_topic = state_topic, command_topic
        self._latest: JointSample | None = None
        self._arrived = threading.Event()
        self.rejected = 0
        self._sub = None
        self._pub = None

    def connect(self) -> None:
        self._sub = self.node.create_subscription(JointState, self.state_topic, self._on_state, ros_io.STATE_QOS)
        self._pub = self.node.create_publisher(JointState, self.command_topic, ros_io.COMMAND_QOS)

    def wait_for_state(self) -> JointSample:
        """Block until a first state arrives (the node must be spinning on another thread).

        Raises:
            DeviceError: nothing on the state topic within ``state_timeout_s``.
        """
        if not self._arrived.wait(self.timeout_s):
            raise DeviceError(f"no joint states on {self.state_topic} within {self.timeout_s} s")
        return self._latest

    def _on_state(self, msg: JointState) -> None:
        n = len(self.names)
        try:
            q = ros_io.ordered_values(msg.name, msg.position, self.names, "position", allow_unnamed=True)
            v, e = (ros_io.ordered_values(msg.name, vals, self.names, f, allow_unnamed=True) if len(vals) == n
                    else np.full(n, np.nan) for f, vals in (("velocity", msg.velocity), ("effort", msg.effort)))
        except ValueError as exc:
            self.rejected += 1
            self.node.get_logger().warn(f"{self.state_topic}: {exc}", throttle_duration_sec=1.0)
            return
        self._latest = JointSample(ros_io.from_time_msg(msg.header.stamp), q, v, e)
        self._arrived.set()

    def read(self) -> JointSample | None:
        return self._latest

    def publish(self, field: str, values) -> None:
        if self._pub is None:
            raise DeviceError(f"not connected: {self.command_topic}")
        stamp = self.node.get_clock().now().nanoseconds * 1e-9
        self._pub.publish(ros_io.joint_state_msg(self.names, stamp, **{field: values}))

    def disconnect(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self.node.destroy_publisher(self._pub)
            self._sub = self._pub = None


class TopicArm(ArmDevice):
    """Arm behind ``state_topic`` (JointState) and ``target_topic`` (JointState positions)."""

    def __init__(self, cfg, node):
        self.cfg = cfg
        self.io = _JointTopics(node, D.ARM_JOINTS, cfg.state_topic, cfg.target_topic, cfg.state_timeout_s)

    def connect(self) -> None:
        self.io.connect()

    def wait_for_state(self) -> JointSample:
        return self.io.wait_for_state()

    def read_state(self) -> JointSample | None:
        return self.io.read()

    def send_servo_target(self, q) -> None:
        self.io.publish("position", q)

    def stop(self) -> None:
        s = self.io.read()
        if s is not None:
            self.send_servo_target(s.position)

    def disconnect(self) -> None:
        self.io.disconnect()


class TopicHand(HandDevice):
    """Allegro hand on the allegro_hand_ros topics: ``<prefix>/joint_states`` in, ``<prefix>/torque_cmd`` out."""

    def __init__(self, cfg, node):
        self.cfg = cfg
        p = cfg.topic_prefix.rstrip("/")
        self.io = _JointTopics(node, D.HAND_JOINTS, f"{p}/joint_states", f"{p}/torque_cmd", cfg.state_timeout_s)

    def connect(self) -> None:
        self.io.connect()

    def wait_for_state(self) -> JointSample:
        return self.io.wait_for_state()

    def read_state(self) -> JointSample | None:
        return self.io.read()

    def send_torque(self, tau) -> None:
        self.io.publish("effort", tau)

    def disconnect(self) -> None:
        self.send_torque(np.zeros(16))
        self.io.disconnect()


class TopicDepthCamera(DepthCamera):
    """Depth from a 32FC1 Image topic plus its CameraInfo (what sim_node and camera_node publish)."""

    def __init__(self, cfg, node):
        self.cfg, self.node = cfg, node
        self._frame: DepthFrame | None = None
        self._K: np.ndarray | None = None
        self._new = threading.Event()
        self._subs = []

    def connect(self) -> None:
        self._subs = [
            self.node.create_subscription(CameraInfo, self.cfg.info_topic, self._on_info, ros_io.IMAGE_QOS),
            self.node.create_subscription(Image, self.cfg.depth_topic, self._on_depth, ros_io.IMAGE_QOS),
        ]

    def _on_info(self, msg: CameraInfo) -> None:
        self._K = np.asarray(msg.k, float).reshape(3, 3)

    def _on_depth(self, msg: Image) -> None:
        if self._K is None:
            return
        try:
            depth = ros_io.depth_from_msg(msg)
        except ValueError as exc:
            self.node.get_logger().warn(f"{self.cfg.depth_topic}: {exc}", throttle_duration_sec=1.0)
            return
        self._frame = DepthFrame(depth, self._K, ros_io.from_time_msg(msg.header.stamp))
        self._new.set()

    def read(self, timeout_s: float = 0.1) -> DepthFrame | None:
        if not self._new.wait(timeout_s):
            return None
        self._new.clear()
        return self._frame

    def latest(self) -> DepthFrame | None:
        """The newest frame without waiting (may be one already returned)."""
        return self._frame

    def disconnect(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []

