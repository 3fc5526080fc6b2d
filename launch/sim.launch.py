"""ros2 launch robot_runtime sim.launch.py [config:=PATH]

Starts the node plan of config/sim.yaml (the same plan `robot-runtime sim` starts natively).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from robot_runtime.config import load_config
from robot_runtime.plan import node_plan


def _nodes(context):
    path = LaunchConfiguration("config").perform(context)
    return [Node(package="robot_runtime", executable=s.executable, name=s.name, parameters=[s.parameters],
                 remappings=list(s.remappings), output="screen")
            for s in node_plan(load_config(path), path)]


def generate_launch_description():
    default = os.path.join(get_package_share_directory("robot_runtime"), "config", "sim.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default, description="runtime config YAML"),
        OpaqueFunction(function=_nodes),
    ])
