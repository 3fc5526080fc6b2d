"""Backends that talk to a device over ROS topics: the twin (sim_node) and the Allegro driver.

The twin serves the same topic shapes as the real drivers, so the Allegro hand's
``twin`` and ``allegro_ros`` backends are one class. The arm and hand backends are read
by a control loop at 120/300 Hz, so they take joint states on demand from a polled
subscription (on a node that no executor spins) instead of paying for an executor
callback per message. The depth camera keeps a callback that validates and drops each
frame into a latest-value slot.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from sensor_msgs.msg import JointState

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.devices.base import ArmDevice, DepthCamera, DepthFrame, HandDevice, JointSample
from robot_runtime.errors import DeviceError


class _JointTopics:
    """Joint states taken on demand from a polled subscription; commands published.

    ``node`` must not be spun by an executor (see :class:`ros_io.PolledSubscription`):
    :meth:`read` takes every waiting state message and keeps the newest.
    """

    def __init__(self, node, names, state_topic: str, command_topic: str):
        self.node, self.names = node, tuple(names)
        self.state_topic, self.command_topic = state_topic, command_topic
        self._latest: JointSample | None = None
        self.rejected = 0
        self._sub: ros_io.PolledSubscription | None = None
        self._pub = None

    def connect(self) -> None:
        self._sub = ros_io.PolledSubscription(self.node, JointState, self.state_topic, ros_io.STATE_QOS)
        self._pub = self.node.create_publisher(JointState, self.command_topic, ros_io.COMMAND_QOS)
        self._writer = ros_io.JointStateWriter(self._pub, self.names)

    def read(self) -> JointSample | None:
        """The newest valid joint state (a malformed message is counted and skipped)."""
        if self._sub is None:
            raise DeviceError(f"not connected: {self.state_topic}")
        for msg in reversed(self._sub.take_all()):
            sample = self._parse(msg)
            if sample is not None:
                self._latest = sample
                break
        return self._latest

    def _parse(self, msg: JointState) -> JointSample | None:
        n = len(self.names)
        try:
            q = ros_io.ordered_values(msg.name, msg.position, self.names, "position", allow_unnamed=True)
            v, e = (ros_io.ordered_values(msg.name, vals, self.names, f, allow_unnamed=True) if len(vals) == n
                    else np.full(n, np.nan) for f, vals in (("velocity", msg.velocity), ("effort", msg.effort)))
        except ValueError as exc:
            self.rejected += 1
            self.node.get_logger().warn(f"{self.state_topic}: {exc}", throttle_duration_sec=1.0)
            return None
        return JointSample(ros_io.from_time_msg(msg.header.stamp), q, v, e)

    def publish(self, field: str, values, stamp: float) -> None:
        if self._pub is None:
            raise DeviceError(f"not connected: {self.command_topic}")
        self._writer.publish(stamp, **{field: values})

    def disconnect(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub.sub)
            self.node.destroy_publisher(self._pub)
            self._sub = self._pub = None


class TopicArm(ArmDevice):
    """Arm behind ``state_topic`` (JointState) and ``target_topic`` (JointState positions).

    Args:
        node: an rclpy node that is never spun (states are polled by :meth:`read_state`).
        clock: stamps for outgoing targets (s, ROS time).
    """

    def __init__(self, cfg, node, clock: Callable[[], float] = time.time):
        self.cfg, self.clock = cfg, clock
        self.io = _JointTopics(node, D.ARM_JOINTS, cfg.state_topic, cfg.target_topic)

    def connect(self) -> None:
        self.io.connect()

    def read_state(self) -> JointSample | None:
        return self.io.read()

    @property
    def rejected_states(self) -> int:
        return self.io.rejected

    def send_servo_target(self, q) -> None:
        self.io.publish("position", q, self.clock())

    def stop(self) -> None:
        s = self.io.read()
        if s is not None:
            self.send_servo_target(s.position)

    def disconnect(self) -> None:
        self.io.disconnect()


class TopicHand(HandDevice):
    """Allegro hand on the allegro_hand_ros topics: ``<prefix>/joint_states`` in, ``<prefix>/torque_cmd`` out.

    Args:
        node: an rclpy node that is never spun (states are polled by :meth:`read_state`).
        clock: stamps for outgoing torques (s, ROS time).
    """

    def __init__(self, cfg, node, clock: Callable[[], float] = time.time):
        self.cfg, self.clock = cfg, clock
        p = cfg.topic_prefix.rstrip("/")
        self.io = _JointTopics(node, D.HAND_JOINTS, f"{p}/joint_states", f"{p}/torque_cmd")

    def connect(self) -> None:
        self.io.connect()

    def read_state(self) -> JointSample | None:
        return self.io.read()

    @property
    def rejected_states(self) -> int:
        return self.io.rejected

    def send_torque(self, tau) -> None:
        self.io.publish("effort", tau, self.clock())

    def disconnect(self) -> None:
        if self.io._pub is not None:
            self.send_torque(np.zeros(16))
        self.io.disconnect()


class TopicDepthCamera(DepthCamera):
    """Depth from a 32FC1 Image topic plus its CameraInfo (what sim_node and camera_node publish)."""

    def __init__(self, cfg, node):
        self.cfg, self.node = cfg, node
        self._frame: DepthFrame | None = None
        self._new = threading.Event()
        self.input: ros_io.DepthInput | None = None

    def connect(self) -> None:
        if self.input is None:
            self.input = ros_io.DepthInput(self.node, self.cfg.depth_topic, self.cfg.info_topic,
                                           self.node.get_logger(), on_frame=self._on_frame)

    def _on_frame(self, stamp: float, depth: np.ndarray, K: np.ndarray) -> None:
        self._frame = DepthFrame(depth, K, stamp)
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
        if self.input is not None:
            self.input.destroy()
            self.input = None

