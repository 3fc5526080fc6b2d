"""hand_controller_node: the 300 Hz Allegro PD loop behind the safety shield.

Backends: ``twin`` and ``allegro_ros`` (torques on ``<prefix>/torque_cmd``). Topics,
services and parameters: see :mod:`robot_runtime.nodes.controller_shell`.
"""
from __future__ import annotations

from robot_runtime import ros_io
from robot_runtime.control.factory import make_hand_controller
from robot_runtime.nodes.controller_shell import ControllerNode


class HandControllerNode(ControllerNode):
    PART = "hand"

    def __init__(self):
        super().__init__("hand_controller_node")

    def rate_hz(self, cfg):
        return cfg.rates.hand_hz

    def build(self, cfg, device):
        return make_hand_controller(cfg, device)


def main(args=None) -> int:
    return ros_io.spin_ros_main(HandControllerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
