"""demo_motion_node: a scripted reach-and-grasp cycle on the twin (what ``make sim`` shows).

Drives the arm and hand through their device backends (``twin``), toward the active
object from ``/twin/object_poses``; at the end of each cycle it resets the twin with
the next seed. The hand PD here is the plain law in ``control.pd``.
"""
from __future__ import annotations

import json

import numpy as np
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.control.demo_motion import ReachGraspScript
from robot_runtime.control.pd import pd_torque
from robot_runtime.devices.base import make_device
from robot_runtime.kinematics import UrdfModel


class DemoMotionNode(Node):
    def __init__(self):
        super().__init__("demo_motion_node")
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.cfg = cfg
        self.arm = make_device("arm", cfg.arm, node=self)
        self.hand = make_device("hand", cfg.hand, node=self)
        self.arm.connect()
        self.hand.connect()
        model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
        self.script = ReachGraspScript(model, cfg.robot.arm_home, cfg.robot.hand_home, cfg.robot.hand_mount.xyz,
                                       cfg.robot.hand_mount.rpy, cfg.demo.cycle_s)
        self.objects: list[str] = []
        self.active: list[str] = []
        self.poses: PoseArray | None = None
        self.create_subscription(String, "/twin/episode", self._on_episode, ros_io.LATCHED_QOS)
        self.create_subscription(PoseArray, "/twin/object_poses", self._on_poses, ros_io.STATE_QOS)
        self.reset_client = self.create_client(Trigger, "/twin/reset")
        self.params = AsyncParameterClient(self, "sim_node")
        self.seed = cfg.twin.seed
        self.cycle_start: float | None = None
        self.cycles = 0
        self.create_timer(1.0 / cfg.demo.rate_hz, self._tick)

    def _on_episode(self, msg: String) -> None:
        info = json.loads(msg.data)
        self.objects, self.active = info["objects"], info["active"]
        self.cycle_start = None  # re-plan toward the new placement

    def _on_poses(self, msg: PoseArray) -> None:
        self.poses = msg

    def _target_position(self) -> np.ndarray | None:
        if self.poses is None or not self.active:
            return None
        graspable = [n for n in self.active if n != "bowl"] or self.active
        p = self.poses.poses[self.objects.index(graspable[0])].position
        return np.array([p.x, p.y, p.z])

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        arm, hand = self.arm.read_state(), self.hand.read_state()
        target = self._target_position()
        if arm is None or hand is None or target is None:
            return
        now = self._now()
        if self.cycle_start is None:
            self.script.plan(arm.position, target)
            self.cycle_start = now
        t = now - self.cycle_start
        q_arm, q_hand = self.script.sample(t)
        self.arm.send_servo_target(q_arm)
        self.hand.send_torque(pd_torque(q_hand, hand.position, hand.velocity, self.cfg.demo.hand_kp,
                                        self.cfg.demo.hand_kd, self.cfg.twin.hand_torque_limit))
        if t > self.cfg.demo.cycle_s + 0.5 and self.reset_client.service_is_ready():
            self.cycles += 1
            self.seed += 1
            self.cycle_start = now + 3600.0  # hold until the new episode arrives
            self.params.set_parameters([Parameter("seed", value=self.seed)]).add_done_callback(
                lambda _f: self.reset_client.call_async(Trigger.Request()))

    def close(self) -> None:
        self.hand.disconnect()


def main(args=None) -> int:
    return ros_io.spin_ros_main(DemoMotionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
