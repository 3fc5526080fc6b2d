"""The ``ros2 launch`` description shared by ``launch/*.launch.py`` (needs ``launch`` and ``launch_ros``).

When a node dies, ``ros2 launch`` by default leaves the others running. That is what is wanted
for every node but the essential ones (:attr:`robot_runtime.plan.NodeSpec.essential`: the two
controllers and the twin), whose exit shuts the launch down (``on_exit=Shutdown``), as the
native launcher does: a dead policy, recorder, teleop, viz or camera leaves the controllers
holding the robot, a dead controller ends the run.
"""
from __future__ import annotations

import os


def generate(config_name: str):
    """A LaunchDescription starting :func:`robot_runtime.plan.node_plan` of ``config:=`` (default: ``config_name``)."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from robot_runtime.config import load_config
    from robot_runtime.plan import node_plan

    def nodes(context):
        path = LaunchConfiguration("config").perform(context)
        return [Node(package="robot_runtime", executable=s.executable, name=s.name, parameters=[s.parameters],
                     remappings=list(s.remappings), output="screen",
                     on_exit=Shutdown(reason=f"{s.name} exited") if s.essential else None)
                for s in node_plan(load_config(path), path)]

    default = os.path.join(get_package_share_directory("robot_runtime"), "config", config_name)
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default, description="runtime config YAML"),
        OpaqueFunction(function=nodes),
    ])
