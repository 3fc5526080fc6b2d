"""demo_motion_node: scripted reach-and-grasp targets on the twin (what ``make sim`` shows).

Stands in for a policy: at the policy rate it publishes the 23 joint targets on
``control.policy_topic``, each stamped for the next tick, so the motion goes through the
arm and hand controllers and their safety shield exactly as a policy's would. At start it
arms both controllers (the operator's action, done for you on the twin only), and arms
again a controller that its watchdog or a joint-state stall stopped (a loaded machine
can stall the twin for a moment); after an e-stop or a device fault it leaves the
controller stopped. At the end of each cycle it resets the twin with the next seed.
"""
from __future__ import annotations

import json

import numpy as np
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.control.demo_motion import ReachGraspScript
from robot_runtime.errors import ConfigError
from robot_runtime.kinematics import UrdfModel
from robot_runtime.nodes.controller_arming import TwinControllerArmer
from robot_runtime.interfaces import STATE_TOPICS


class DemoMotionNode(Node):
    def __init__(self):
        super().__init__("demo_motion_node")
        cfg = load_config(self.declare_parameter("config_file", "").value)
        if not cfg.uses_twin:
            raise ConfigError("demo_motion_node drives the twin only", key="demo.enabled")
        self.cfg = cfg
        model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
        self.script = ReachGraspScript(model, cfg.robot.arm_home, cfg.robot.hand_home, cfg.robot.hand_mount.xyz,
                                       cfg.robot.hand_mount.rpy, cfg.demo.cycle_s, cfg.control.workspace.table_z)
        self.period = 1.0 / cfg.rates.policy_hz
        self.objects: list[str] = []
        self.active: list[str] = []
        self.poses: PoseArray | None = None
        self.arm_q: np.ndarray | None = None
        self.create_subscription(String, "/twin/episode", self._on_episode, ros_io.LATCHED_QOS)
        self.create_subscription(PoseArray, "/twin/object_poses", self._on_poses, ros_io.STATE_QOS)
        self.create_subscription(JointState, STATE_TOPICS["arm"], self._on_arm_state, ros_io.STATE_QOS)
        self.pub = self.create_publisher(JointState, cfg.control.policy_topic, ros_io.STATE_QOS)
        self.reset_client = self.create_client(Trigger, "/twin/reset")
        self.armer = TwinControllerArmer(self)
        self.params = AsyncParameterClient(self, "sim_node")
        self.seed = cfg.twin.seed
        self.cycle_start: float | None = None
        self.cycles = 0
        self.create_timer(self.period, self._tick)

    def _on_episode(self, msg: String) -> None:
        info = json.loads(msg.data)
        self.objects, self.active = info["objects"], info["active"]
        self.cycle_start = None  # re-plan toward the new placement

    def _on_poses(self, msg: PoseArray) -> None:
        self.poses = msg

    def _on_arm_state(self, msg: JointState) -> None:
        self.arm_q = np.asarray(msg.position, dtype=float)

    def _target_position(self) -> np.ndarray | None:
        if self.poses is None or not self.active:
            return None
        graspable = [n for n in self.active if n != "bowl"] or self.active
        p = self.poses.poses[self.objects.index(graspable[0])].position
        return np.array([p.x, p.y, p.z])

    def _tick(self) -> None:
        target = self._target_position()
        if self.arm_q is None or target is None or not self.armer.all_armed:
            return
        now = self.get_clock().now().nanoseconds * 1e-9
        if self.cycle_start is None:
            self.script.plan(self.arm_q, target)
            self.cycle_start = now
        t_for = now + self.period  # each target is for the next tick
        q_arm, q_hand = self.script.sample(t_for - self.cycle_start)
        self.pub.publish(ros_io.joint_state_msg(D.ALL_JOINTS, t_for, np.concatenate([q_arm, q_hand])))
        if now - self.cycle_start > self.cfg.demo.cycle_s + 0.5 and self.reset_client.service_is_ready():
            self.cycles += 1
            self.seed += 1
            self.cycle_start = now + 3600.0  # hold until the new episode arrives
            self.params.set_parameters([Parameter("seed", value=self.seed)]).add_done_callback(
                lambda _f: self.reset_client.call_async(Trigger.Request()))


def main(args=None) -> int:
    return ros_io.spin_ros_main(DemoMotionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
