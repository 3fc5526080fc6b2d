"""Build a teleop session and its input from the runtime config (no ROS)."""
from __future__ import annotations

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.kinematics import UrdfModel
from robot_runtime.teleop.arm_follow import WristFollower
from robot_runtime.teleop.inputs import TeleopInput, make_input
from robot_runtime.teleop.scripted import HAND_GRASP
from robot_runtime.teleop.session import TeleopSession
from robot_runtime.transforms import rpy_to_mat

#: Inputs that track a human hand, and so need finger retargeting.
TRACKED_HAND_INPUTS = ("hand_tracking", "keypoints")


def make_session(cfg: RuntimeConfig, model: UrdfModel | None = None, retargeter=None) -> TeleopSession:
    """The session for ``cfg.teleop`` (a FingerRetargeter is built for hand-tracking inputs unless given)."""
    t = cfg.teleop
    model = model or UrdfModel.from_file(D.description_path(D.URDF_NAME))
    if retargeter is None and t.input.type in TRACKED_HAND_INPUTS:
        from robot_runtime.teleop.retarget import FingerRetargeter  # noqa: PLC0415 - pulls in pinocchio

        retargeter = FingerRetargeter(t.retarget_scaling)
    follower = WristFollower(model, rpy_to_mat(t.input_rpy), t.motion_scale, t.filter_cutoff_hz, t.max_flange_speed,
                             t.max_flange_angular_speed)
    speed = np.array([t.max_arm_joint_speed] * len(D.ARM_JOINTS) + [t.max_hand_joint_speed] * len(D.HAND_JOINTS))
    return TeleopSession(follower, D.ALL_LIMITS, speed, cfg.robot.hand_home, HAND_GRASP, retargeter)


def make_teleop_input(cfg: RuntimeConfig, model: UrdfModel | None = None) -> TeleopInput:
    model = model or UrdfModel.from_file(D.description_path(D.URDF_NAME))
    # The scripted expert plans at 80% of the session's speed limits, so the robot keeps up.
    return make_input(cfg.teleop.input, model, cfg.robot, cfg.control.workspace.table_z,
                      0.8 * cfg.teleop.max_arm_joint_speed, 0.8 * cfg.teleop.max_hand_joint_speed)
