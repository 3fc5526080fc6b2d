"""The ``ros2 launch`` description shared by ``launch/*.launch.py`` (needs ``launch`` and ``launch_ros``)."""
from __future__ import annotations

import os


def generate(config_name: str):
    """A LaunchDescription starting :func:`robot_runtime.plan.node_plan` of ``config:=`` (default: ``config_name``)."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from robot_runtime.config import load_config
    from robot_runtime.plan import node_plan

    def nodes(context):
        path = LaunchConfiguration("config").perform(context)
        return [Node(package="robot_runtime", executable=s.executable, name=s.name, parameters=[s.parameters],
                     remappings=list(s.remappings), output="screen")
                for s in node_plan(load_config(path), path)]

    default = os.path.join(get_package_share_directory("robot_runtime"), "config", config_name)
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default, description="runtime config YAML"),
        OpaqueFunction(function=nodes),
    ])
