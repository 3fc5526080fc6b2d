"""hand_controller_node: the 300 Hz Allegro PD loop behind the safety shield.

Backends: ``twin`` and ``allegro_ros`` (torques on ``<prefix>/torque_cmd``).
Topics, services and parameters: see :mod:`robot_runtime.nodes.controller_shell`.
"""
from __future__ import annotations

from robot_runtime import ros_io
from robot_runtime.nodes.controller_shell import ControllerNode


class HandControllerNode(ControllerNode):
    def __init__(self):
        super().__init__("hand")


def main(args=None) -> int:
    return ros_io.spin_ros_main(HandControllerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
