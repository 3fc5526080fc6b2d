"""arm_controller_node: the 120 Hz xArm servo loop behind the safety shield.

Backends: ``twin`` (sim_node's servo topics) and ``xarm`` (xarm-python-sdk servo mode).
Topics, services and parameters: see :mod:`robot_runtime.nodes.controller_shell`.
"""
from __future__ import annotations

from robot_runtime import ros_io
from robot_runtime.nodes.controller_shell import ControllerNode


class ArmControllerNode(ControllerNode):
    def __init__(self):
        super().__init__("arm")


def main(args=None) -> int:
    return ros_io.spin_ros_main(ArmControllerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
