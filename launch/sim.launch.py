"""ros2 launch robot_runtime sim.launch.py [config:=PATH]

Starts the node plan of config/sim.yaml (the same plan `robot-runtime sim` starts natively).
"""
from robot_runtime.launch_description import generate


def generate_launch_description():
    return generate("sim.yaml")
