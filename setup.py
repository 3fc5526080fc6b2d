"""ament_python package for robot_runtime.

Installs with ``colcon build`` on a lab PC with ROS 2 Jazzy, and with
``pip install -e .[twin,dev]`` in a plain virtual environment (the Makefile does this).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "robot_runtime"

NODES = {
    "sim_node": "robot_runtime.nodes.sim_node:main",
    "camera_node": "robot_runtime.nodes.camera_node:main",
    "demo_motion_node": "robot_runtime.nodes.demo_motion_node:main",
    "arm_controller_node": "robot_runtime.nodes.arm_controller_node:main",
    "hand_controller_node": "robot_runtime.nodes.hand_controller_node:main",
    "policy_node": "robot_runtime.nodes.policy_node:main",
    "teleop_node": "robot_runtime.nodes.teleop_node:main",
    "recorder_node": "robot_runtime.nodes.recorder_node:main",
    "finetune_node": "robot_runtime.nodes.finetune_node:main",
    "viz_node": "robot_runtime.nodes.viz_node:main",
    "calibration_node": "robot_runtime.nodes.calibration_node:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["robot_runtime", "robot_runtime.*", "policies", "policies.*",
                                    "calibration", "calibration.*"]),
    package_data={"robot_runtime": ["description/*.urdf", "description/*.xml"],
                  "policies": ["checkpoints/*/policy.json", "checkpoints/*/model.safetensors"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/description", glob("robot_runtime/description/*.urdf")
         + glob("robot_runtime/description/*.xml")),
    ],
    python_requires=">=3.10",
    # pin: pinocchio, the robot's kinematics (the controllers' workspace check, IK, calibration);
    # transforms3d: rotations and poses. numba: the point-cloud path's per-pixel and per-point
    # loops (the robot self-filter), compiled, on the policy's critical path.
    install_requires=["numpy>=1.24", "PyYAML>=6", "pin>=2.7", "transforms3d>=0.4", "numba>=0.60"],
    extras_require={
        # The MuJoCo twin of the lab cell (offscreen rendering with MUJOCO_GL=egl).
        "twin": ["mujoco>=3.2"],
        # UFactory xArm: imported only when an arm backend of type "xarm" is chosen.
        "xarm": ["xarm-python-sdk>=1.14"],
        # The policy: checkpoints, ONNX export and ONNX Runtime (torch is installed first, pinned).
        "policy": ["torch", "safetensors>=0.4", "onnx>=1.15", "onnxruntime>=1.18", "tqdm>=4"],
        # Teleoperation and demo data: finger retargeting (dex-retargeting, on pinocchio), the
        # LeRobot export (parquet), rosbag2 in and out (rosbags: MCAP and sqlite3, no ROS install), video input (six: an undeclared import of dex-retargeting). MediaPipe itself is installed by the Makefile with
        # --no-deps (mediapipe==0.10.21 carries its hand models but pins numpy<2 and protobuf<5,
        # while it runs with the numpy 2 and protobuf 6 the rest needs); these are its imports.
        "teleop": ["dex-retargeting>=0.5", "six>=1.16", "pyarrow>=15", "rosbags>=0.10", "protobuf>=6.31,<7", "opencv-python-headless>=4.8",
                   "matplotlib>=3.7", "absl-py>=1", "attrs>=19.1", "flatbuffers>=2"],
        # A SpaceMouse input (HID): imported only when a teleop input of type "spacemouse" is chosen.
        "spacemouse": ["pyspacemouse>=1.1"],
        # bench.policy's reference implementation (a Hugging Face GPT-2 trunk).
        "bench": ["transformers>=4.40"],
        # Rerun visualisation (viz_node, robot-runtime replay, eval --rrd).
        "viz": ["rerun-sdk>=0.24"],
        "dev": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3"],
    },
    zip_safe=True,
    maintainer="robot_runtime maintainers",
    maintainer_email="lab@example.org",
    description="Runtime for learned dexterous manipulation policies on xArm7 + Allegro + ZED 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in NODES.items()]
        + ["robot-runtime = robot_runtime.cli:main"],
    },
)
