"""A hand-eye calibration run end to end: plan arm poses, visit them, see the marker, solve,
verify against depth, write the calibration file and its picture.

    robot-runtime calibrate [--config config/sim.yaml] [--poses 15] [--out calibration/twin_zed.yaml]

On the twin (``camera.type: twin``) everything runs in process: the twin gets the marker
plate on the palm (``twin.calibration_marker``), renders colour at 4x the depth resolution
(the ZED's colour is sharper than its depth) and depth, and the arm is driven to each pose
by its servo target with the hand held open by the hand controller's PD law.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from calibration.handeye import CalibrationError, HandEyeResult, MarkerSighting, detect_marker, solve_hand_eye
from calibration.verify import DepthCheck, RobotDepthModel, check_depth, save_check_png
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.description.marker import MarkerSpec
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import make_T, rot_axis, rpy_to_mat
from robot_runtime.twin.drive import ShieldedTwinDrive

#: Where the marker is held for the camera (base frame, m).
POSE_BOX = ((0.3, 0.55), (-0.2, 0.1), (0.18, 0.36))
MAX_TILT_DEG = 30.0     # the marker's normal off the line of sight
MAX_ROLL_DEG = 40.0     # the marker turned about its normal


@dataclass
class CalibrationRun:
    result: HandEyeResult
    check: DepthCheck
    sightings: list[MarkerSighting]
    planned: int
    seconds: float
    depth: np.ndarray     # the depth frame of the last pose the marker was seen at [H, W] (m)
    q_check: np.ndarray   # the joints there [23] (rad, driver order)


def plan_marker_poses(model: UrdfModel, spec: MarkerSpec, T_flange_link: np.ndarray, T_camera_guess: np.ndarray, K,
                      image_size: tuple[float, float], q_home, n: int, rng: np.random.Generator,
                      max_tries: int = 400, limit_margin: float = 0.05) -> list[np.ndarray]:
    """Arm joint targets [7] for ``n`` marker poses facing the camera from varied angles.

    Each pose puts the marker somewhere in :data:`POSE_BOX`, its normal within
    :data:`MAX_TILT_DEG` of the line of sight to the camera and turned by up to
    :data:`MAX_ROLL_DEG` about it; poses the arm cannot reach, or whose marker would leave the
    image (``image_size`` = (width, height) with intrinsics ``K``), are skipped.
    ``T_camera_guess`` is a rough camera pose (a few cm and degrees off does not matter): it
    only keeps the marker in view. ``q_home`` [n] (model order) seeds every IK. Solutions
    within ``limit_margin`` (rad) of a joint limit are skipped: the controllers' shield keeps
    targets inside the limits by a margin of its own.
    """
    Tc = np.linalg.inv(np.asarray(T_camera_guess, float))
    cam = np.asarray(T_camera_guess, float)[:3, 3]
    T_link_marker = spec.T_link_marker
    T_marker_flange = np.linalg.inv(T_flange_link @ T_link_marker)
    out = []
    w, h = image_size
    lo, hi = model.limits[:7, 0], model.limits[:7, 1]
    for _ in range(max_tries):
        if len(out) == n:
            break
        p = np.array([rng.uniform(*POSE_BOX[0]), rng.uniform(*POSE_BOX[1]), rng.uniform(*POSE_BOX[2])])
        sight = (cam - p) / np.linalg.norm(cam - p)
        tilt_axis = np.cross(sight, rng.normal(size=3))
        tilt_axis /= np.linalg.norm(tilt_axis)
        z = rot_axis(tilt_axis, math.radians(rng.uniform(0, MAX_TILT_DEG))) @ sight
        up = np.array([0.0, 0.0, 1.0])   # the marker's y (the fingers) up: the wrist hangs below, out of the view
        y = up - (up @ z) * z
        y /= np.linalg.norm(y)
        R = np.column_stack([np.cross(y, z), y, z])
        R = rot_axis(z, math.radians(rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG))) @ R
        if sight @ R[:, 1] < math.sin(math.radians(10.0)):
            continue    # seen from the wrist's side: the wrist, thicker than the palm, would hide the marker's edge
        T_base_marker = make_T(R, p)
        q, pos_err, rot_err = solve_ik(model, np.asarray(q_home, float), D.FLANGE_FRAME, T_base_marker @ T_marker_flange,
                                       np.arange(7), iters=200)
        if pos_err > 2e-3 or rot_err > 0.01:
            continue
        if np.any(q[:7] < lo + limit_margin) or np.any(q[:7] > hi - limit_margin):
            continue
        # the marker's corners must land inside the image, with a margin
        corners = (T_base_marker[:3, :3] @ spec.object_points().T).T + p
        pc = corners @ Tc[:3, :3].T + Tc[:3, 3]
        uv = (K @ pc.T).T
        uv = uv[:, :2] / uv[:, 2:3]
        if np.all((uv > 20) & (uv < [w - 20, h - 20])):
            out.append(q[:7])
    if len(out) < n:
        raise CalibrationError(f"planned only {len(out)} of {n} reachable marker poses in view")
    return out


def plan_for_robot(cfg: RuntimeConfig, model: UrdfModel, spec: MarkerSpec, T_camera_guess: np.ndarray, K,
                   image_size: tuple[float, float], n: int, seed: int) -> list[np.ndarray]:
    """:func:`plan_marker_poses` for ``cfg``'s robot (its hand mount, seeded at its home pose)."""
    r = cfg.robot
    order = np.array([D.ALL_JOINTS.index(name) for name in model.joint_names])
    q_home = np.concatenate([r.arm_home, r.hand_home])[order]
    T_flange_palm = make_T(rpy_to_mat(r.hand_mount.rpy), r.hand_mount.xyz)
    return plan_marker_poses(model, spec, T_flange_palm, T_camera_guess, K, image_size, q_home, n,
                             np.random.default_rng(seed))


def calibrate_on_twin(cfg: RuntimeConfig, n_poses: int = 15, seed: int = 0, settle_s: float = 2.5,
                      progress: bool = True) -> CalibrationRun:
    """Calibrate the twin camera's pose (see the module docstring).

    The twin's true camera pose is used only to keep the planned poses in view, as a lab would
    use a rough guess; the solver never sees it.
    """
    from robot_runtime.twin.sim import COLOR_SCALE, TwinSimulation  # noqa: PLC0415 - needs mujoco

    t0 = time.monotonic()
    spec = MarkerSpec()
    sim = TwinSimulation(replace(cfg.twin, calibration_marker=True), cfg.robot)
    try:
        sim.reset(cfg.twin.task, seed)
        model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
        order = np.array([D.ALL_JOINTS.index(n) for n in model.joint_names])
        r = cfg.robot
        Kc = sim.color_intrinsics()
        img_size = (cfg.twin.camera.width * COLOR_SCALE, cfg.twin.camera.height * COLOR_SCALE)
        targets = plan_for_robot(cfg, model, spec, sim.camera_pose(), Kc, img_size, n_poses, seed)
        sightings, depth_last, q_last = [], None, None
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415
            bar = tqdm(total=len(targets), desc="calibration poses", unit="pose")
        hand_open = np.asarray(r.hand_home, float)
        drive = ShieldedTwinDrive(sim, cfg, 1.0 / cfg.rates.policy_hz)
        for q_arm in targets:
            for _ in range(int(round(settle_s / drive.period))):   # to the pose within the controllers' limits
                drive.step(np.concatenate([q_arm, hand_open]))
            q = np.concatenate([sim.arm_state().position, sim.hand_state().position])
            corners = detect_marker(sim.render_color(), spec)
            depth = sim.render_depth()
            if corners is not None:
                sightings.append(MarkerSighting(model.link_pose(q[order], spec.link), corners, q))
                depth_last, q_last = depth, q
            if bar is not None:
                bar.update(1)
                bar.set_postfix(seen=len(sightings))
        if bar is not None:
            bar.close()
        if depth_last is None:
            raise CalibrationError("the marker was never seen")
        result, check = solve_and_check(sightings, Kc, spec, depth_last, q_last, sim.intrinsics())
        return CalibrationRun(result, check, sightings, len(targets), time.monotonic() - t0, depth_last, q_last)
    finally:
        sim.close()


def marker_spec(cfg: RuntimeConfig) -> MarkerSpec:
    """The marker ``calibration.marker`` describes (mounted where :mod:`robot_runtime.description.marker` says)."""
    m = cfg.calibration.marker
    return MarkerSpec(dictionary=m.dictionary, marker_id=m.id, cell=m.cell)


def solve_and_check(sightings: list[MarkerSighting], K_color, spec: MarkerSpec, depth: np.ndarray, q,
                    K_depth) -> tuple[HandEyeResult, DepthCheck]:
    """Solve the camera pose from the sightings (colour intrinsics ``K_color``), then check it
    against a depth frame [H, W] (m) taken at joints ``q`` [23] (rad, driver order)."""
    result = solve_hand_eye(sightings, K_color, spec)
    return result, check_depth(depth, q, K_depth, result.T_base_camera, RobotDepthModel())


def write_calibration(path, run: CalibrationRun, camera_serial: str, spec: MarkerSpec | None = None,
                      picture: str = "") -> Path:
    """The calibration YAML: ``T_base_camera`` (what the runtime reads) with how it was made."""
    spec = spec or MarkerSpec()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "T_base_camera": np.round(run.result.T_base_camera, 9).tolist(),
        "camera_serial": camera_serial,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": (f"eye-to-hand; ArUco {spec.dictionary} id {spec.marker_id}, {spec.size * 1e3:.0f} mm, on the "
                   f"{spec.link}; cv2.solvePnP per pose, {run.result.initial}, then Levenberg-Marquardt on the "
                   f"corners' reprojection"),
        "T_link_marker": np.round(run.result.T_link_marker, 9).tolist(),
        "residuals": run.result.summary() | {"per_pose_reprojection_px": np.round(run.result.reprojection_px, 3).tolist()},
        "verification": run.check.to_dict() | ({"picture": picture} if picture else {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("# Written by robot-runtime calibrate. The runtime reads T_base_camera (camera optical frame in\n"
                   "# the robot base frame, m); the rest records how it was made.\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    tmp.replace(path)
    return path


def write_outputs(out, run: CalibrationRun, camera_serial: str, K_depth, spec: MarkerSpec | None = None,
                  logger=None) -> Path:
    """Write the YAML at ``out`` and the verification PNG next to it, and log both to Rerun when
    ``logger`` is a :class:`robot_runtime.viz.rerun_log.RolloutLogger`. Returns the YAML's path."""
    out = Path(out)
    png = save_check_png(out.with_suffix(".png"), run.depth, run.check,
                         f"calibration check: {run.result.inliers.sum()} of {len(run.sightings)} poses")
    path = write_calibration(out, run, camera_serial, spec, picture=png.name)
    if logger is not None:
        log_check(logger, run, K_depth)
    return path


def log_check(logger, run: CalibrationRun, K_depth) -> None:
    """The calibrated camera, the depth frame, the residual map and the robot, to Rerun."""
    logger.log_camera(K_depth, run.result.T_base_camera, run.depth.shape[1], run.depth.shape[0])
    logger.log_depth(run.depth)
    logger.log_calibration_check(run.check.residual, f"median depth residual {run.check.median_abs_m * 1e3:.1f} mm "
                                                     f"on {run.check.robot_pixels} robot pixels")
    logger.log_robot(run.q_check)


def run_and_write(cfg: RuntimeConfig, out, n_poses: int = 15, seed: int = 0, logger=None) -> tuple[CalibrationRun, Path]:
    """Calibrate on the twin in this process (no ROS graph), then :func:`write_outputs`."""
    if cfg.camera.type != "twin":
        raise CalibrationError("in-process calibration runs on the twin only; on the robot run calibration_node "
                               "(robot-runtime calibrate --config <your robot config>)")
    from robot_runtime.twin.sim import camera_intrinsics  # noqa: PLC0415

    run = calibrate_on_twin(cfg, n_poses, seed)
    return run, write_outputs(out, run, "twin", camera_intrinsics(cfg.twin.camera), logger=logger)


