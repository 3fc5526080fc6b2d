"""Build the arm and hand controllers from a :class:`~robot_runtime.config.RuntimeConfig` (no ROS)."""
from __future__ import annotations

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.controller import ArmServoController, HandPDController, WatchdogTiming
from robot_runtime.control.safety import JointLimits, Workspace
from robot_runtime.errors import DescriptionError
from robot_runtime.kinematics import UrdfModel



class RobotPoints:
    """Flange and fingertip positions (m, base frame) by forward kinematics of the whole robot
    (:class:`~robot_runtime.kinematics.UrdfModel`, pinocchio on the robot's URDF: about 5 us a
    call, on the hand's 300 Hz loop)."""

    def __init__(self, urdf_path=None):
        path = urdf_path or D.description_path(D.URDF_NAME)
        self.model = UrdfModel.from_file(path)
        if self.model.joint_names != D.ALL_JOINTS:
            raise DescriptionError(f"{path}: expected the joints {list(D.ALL_JOINTS)}, found "
                                   f"{list(self.model.joint_names)}")
        self.tips = tuple(D.FINGERTIP_FRAMES)
        self._arm_names = ("flange",) + self.tips
        split = (len(D.ARM_JOINTS), len(D.HAND_JOINTS))
        self._arm_points = self.model.positions_function(self.model.frame_ids((D.FLANGE_FRAME,) + self.tips), split)
        self._hand_points = self.model.positions_function(self.model.frame_ids(self.tips), split)

    def for_arm(self, q_arm: np.ndarray, q_hand: np.ndarray) -> dict[str, np.ndarray]:
        """Flange and fingertips for arm positions [7] with the hand at ``q_hand`` [16]."""
        return dict(zip(self._arm_names, self._arm_points(q_arm, q_hand)))

    def for_hand(self, q_hand: np.ndarray, q_arm: np.ndarray) -> dict[str, np.ndarray]:
        """Fingertips for hand positions [16] with the arm at ``q_arm`` [7]."""
        return dict(zip(self.tips, self._hand_points(q_arm, q_hand)))


def workspace_of(cfg: RuntimeConfig) -> Workspace:
    w = cfg.control.workspace
    return Workspace(w.table_z, w.flange_clearance, w.fingertip_clearance, tuple(w.box_min), tuple(w.box_max),
                     w.max_flange_speed)


def timing_of(cfg: RuntimeConfig) -> WatchdogTiming:
    c = cfg.control
    return WatchdogTiming(hold_after_s=c.hold_after_periods / cfg.rates.policy_hz, latch_after_s=c.latch_after_s,
                          blend_s=c.blend_s, max_lead_s=c.max_target_lead_s)


def joint_limits(names, published, section) -> JointLimits:
    """The shield's limits: the published joint ``(lower, upper)`` pairs and a config
    section with ``position_margin``, ``max_velocity``, ``max_acceleration``, ``max_step``."""
    lim = np.asarray(published, float)
    return JointLimits(tuple(names), lim[:, 0], lim[:, 1], section.position_margin,
                       np.asarray(section.max_velocity), np.asarray(section.max_acceleration),
                       np.asarray(section.max_step))


def make_arm_controller(cfg: RuntimeConfig, device, points: RobotPoints | None = None) -> ArmServoController:
    points = points or RobotPoints()
    return ArmServoController(device, joint_names=D.ARM_JOINTS, target_names=D.ALL_JOINTS,
                              limits=joint_limits(D.ARM_JOINTS, D.ARM_LIMITS, cfg.control.arm),
                              timing=timing_of(cfg), period_s=1.0 / cfg.rates.arm_hz, workspace=workspace_of(cfg),
                              points_fn=points.for_arm, source=cfg.control.source,
                              state_timeout_s=cfg.control.device_state_timeout_s)


def make_hand_controller(cfg: RuntimeConfig, device, points: RobotPoints | None = None) -> HandPDController:
    points = points or RobotPoints()
    h = cfg.control.hand
    return HandPDController(device, kp=h.kp, kd=h.kd, torque_limit=h.torque_limit,
                            velocity_cutoff_hz=h.velocity_cutoff_hz, joint_names=D.HAND_JOINTS,
                            target_names=D.ALL_JOINTS, limits=joint_limits(D.HAND_JOINTS, D.HAND_LIMITS, h),
                            timing=timing_of(cfg),
                            period_s=1.0 / cfg.rates.hand_hz, workspace=workspace_of(cfg),
                            points_fn=points.for_hand, source=cfg.control.source,
                            state_timeout_s=cfg.control.device_state_timeout_s)
