"""Build the arm and hand controllers from a :class:`~robot_runtime.config.RuntimeConfig` (no ROS)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.controller import ArmServoController, HandPDController, WatchdogTiming
from robot_runtime.control.safety import JointLimits, Workspace
from robot_runtime.errors import DescriptionError



class RobotPoints:
    """Flange and fingertip positions (m, base frame) by forward kinematics of the whole robot
    (pinocchio on the robot's URDF: about 5 us a call, against about 60 us for the plain numpy
    tree walk of :class:`~robot_runtime.kinematics.UrdfModel`, on the hand's 300 Hz loop)."""

    def __init__(self, urdf_path=None):
        import pinocchio as pin  # noqa: PLC0415

        self._pin = pin
        path = urdf_path or D.description_path(D.URDF_NAME)
        self.model = pin.buildModelFromXML(Path(path).read_text())
        self.data = self.model.createData()
        self.tips = tuple(D.FINGERTIP_FRAMES)
        names = D.ALL_JOINTS
        self._q_index = np.array([self.model.joints[self.model.getJointId(n)].idx_q for n in names])
        if self.model.nq != len(names) or sorted(self._q_index) != list(range(len(names))):
            raise DescriptionError(f"{path}: expected one position each for the joints {list(names)}")
        self._frames = {n: self.model.getFrameId(D.FLANGE_FRAME if n == "flange" else n) for n in ("flange",) + self.tips}
        self._q = np.zeros(self.model.nq)
        self._lock = threading.Lock()   # one pinocchio data: calls from two threads take turns

    def _points(self, q_arm: np.ndarray, q_hand: np.ndarray, names) -> dict[str, np.ndarray]:
        pin = self._pin
        with self._lock:
            n_arm = len(D.ARM_JOINTS)
            self._q[self._q_index[:n_arm]] = q_arm
            self._q[self._q_index[n_arm:]] = q_hand
            pin.forwardKinematics(self.model, self.data, self._q)
            return {n: pin.updateFramePlacement(self.model, self.data, self._frames[n]).translation.copy()
                    for n in names}

    def for_arm(self, q_arm: np.ndarray, q_hand: np.ndarray) -> dict[str, np.ndarray]:
        """Flange and fingertips for arm positions [7] with the hand at ``q_hand`` [16]."""
        return self._points(q_arm, q_hand, ("flange",) + self.tips)

    def for_hand(self, q_hand: np.ndarray, q_arm: np.ndarray) -> dict[str, np.ndarray]:
        """Fingertips for hand positions [16] with the arm at ``q_arm`` [7]."""
        return self._points(q_arm, q_hand, self.tips)


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
