"""Hand-eye calibration: the solver on synthetic sightings, the whole run on the twin (the true
camera pose is known), the depth check catching a perturbed calibration, and the file."""
import numpy as np
import pytest
import yaml

from calibration.extrinsics import calibration_metadata, camera_pose_for, load_camera_pose
from calibration.handeye import (CalibrationError, MarkerSighting, park_martin, pose_error, solve_hand_eye)
from robot_runtime.description.marker import MarkerSpec
from robot_runtime.config import config_from_dict, load_config
from robot_runtime.transforms import make_T, rot_axis, rot_exp
from tests.ros_probe import REPO, start_node

K = np.array([[700.0, 0, 640], [0, 700.0, 480], [0, 0, 1]])


def _synthetic(n, rng, noise_px=0.0):
    """Sightings of a marker on a link moved about in front of a known camera."""
    spec = MarkerSpec()
    X = make_T(rot_axis((1, 0, 0), -2.1), [0.55, -0.75, 0.45])          # camera in base
    Y = make_T(rot_axis((0, 1, 0), 0.3), [0.01, -0.06, -0.05])           # marker on link
    out, obj = [], spec.object_points()
    while len(out) < n:
        p = np.array([rng.uniform(0.3, 0.6), rng.uniform(-0.2, 0.1), rng.uniform(0.2, 0.4)])
        T_cam_marker_wanted = make_T(rot_exp(rng.normal(0, 0.35, 3)) @ rot_axis((1, 0, 0), np.pi),
                                     np.linalg.inv(X)[:3, :3] @ p + np.linalg.inv(X)[:3, 3])
        L = X @ T_cam_marker_wanted @ np.linalg.inv(Y)
        pc = (T_cam_marker_wanted[:3, :3] @ obj.T).T + T_cam_marker_wanted[:3, 3]
        if np.any(pc[:, 2] < 0.1):
            continue
        uv = (K @ pc.T).T
        uv = uv[:, :2] / uv[:, 2:3] + rng.normal(0, noise_px, (4, 2))
        out.append(MarkerSighting(L, uv))
    return out, X, Y


def test_solver_recovers_both_transforms_and_rejects_a_bad_sighting():
    rng = np.random.default_rng(1)
    s, X, Y = _synthetic(14, rng, noise_px=0.1)
    s[5].corners = s[5].corners + 15.0            # a mis-detection
    res = solve_hand_eye(s, K)
    assert not res.inliers[5] and res.inliers.sum() == 13
    dp, dr = pose_error(res.T_base_camera, X)
    assert dp < 1.0 and dr < 0.1, (dp, dr)
    dp, dr = pose_error(res.T_link_marker, Y)
    assert dp < 1.0 and dr < 0.2, (dp, dr)
    assert res.summary()["rejected"] == [5]


def test_park_martin_is_exact_on_exact_motions():
    rng = np.random.default_rng(2)
    X = make_T(rot_exp([0.3, -2.0, 0.4]), [0.5, -0.7, 0.4])
    Y = make_T(rot_exp([0.1, 0.2, -0.3]), [0.02, -0.05, 0.03])
    links = np.stack([make_T(rot_exp(rng.normal(0, 0.8, 3)), rng.normal(0, 0.3, 3)) for _ in range(8)])
    cams = np.linalg.inv(X)[None] @ links @ Y[None]
    dp, dr = pose_error(park_martin(links, cams), X)
    assert dp < 1e-6 and dr < 1e-6


def test_too_few_sightings_is_a_clear_error():
    s, _, _ = _synthetic(4, np.random.default_rng(3))
    with pytest.raises(CalibrationError, match="4 marker sightings; .* at least 6"):
        solve_hand_eye(s, K)


@pytest.fixture(scope="module")
def twin_run():
    pytest.importorskip("cv2")
    from calibration.session import calibrate_on_twin

    cfg = load_config(REPO / "config" / "sim.yaml")
    return cfg, calibrate_on_twin(cfg, n_poses=15, seed=0, progress=False)


def test_twin_calibration_recovers_the_camera_within_5_mm_and_half_a_degree(twin_run):
    cfg, run = twin_run
    assert len(run.sightings) >= 12 and run.result.inliers.sum() >= 12
    dp, dr = pose_error(run.result.T_base_camera, camera_pose_for(cfg))
    assert dp < 5.0 and dr < 0.5, (dp, dr)
    assert np.median(run.result.reprojection_px[run.result.inliers]) < 0.5
    # the marker's mount is recovered too (the twin's is exact)
    dp, dr = pose_error(run.result.T_link_marker, MarkerSpec().T_link_marker)
    assert dp < 5.0 and dr < 1.0, (dp, dr)


def test_depth_check_catches_a_perturbed_calibration(twin_run):
    from calibration.verify import RobotDepthModel, check_depth
    from robot_runtime.twin.sim import camera_intrinsics

    cfg, run = twin_run
    good = run.check.median_abs_m
    assert good < 0.002 and run.check.robot_pixels > 2000
    robot = RobotDepthModel()
    K_depth = camera_intrinsics(cfg.twin.camera)
    for shift in (make_T(np.eye(3), [0.01, 0.0, 0.0]), make_T(rot_axis((0, 0, 1), np.radians(1.0)), [0, 0, 0])):
        bad = check_depth(run.depth, run.q_check, K_depth, shift @ run.result.T_base_camera, robot)
        assert bad.median_abs_m > max(3 * good, 0.003), (good, bad.median_abs_m)


def test_calibration_file_round_trip_feeds_the_runtime(twin_run, tmp_path):
    from calibration.session import write_calibration
    from calibration.verify import save_check_png

    cfg, run = twin_run
    png = save_check_png(tmp_path / "cal.png", run.depth, run.check)
    path = write_calibration(tmp_path / "cal.yaml", run, "twin", picture=png.name)
    assert png.stat().st_size > 10_000
    np.testing.assert_allclose(load_camera_pose(path), run.result.T_base_camera, atol=1e-8)
    doc = yaml.safe_load(path.read_text())
    assert doc["camera_serial"] == "twin" and doc["date"] and doc["residuals"]["inliers"] >= 12
    # the file is what the runtime's point clouds and the recorder's metadata use
    cfg2 = config_from_dict({"policy": {"checkpoint": "", "calibration_file": str(path)}})
    np.testing.assert_allclose(camera_pose_for(cfg2), run.result.T_base_camera, atol=1e-8)
    meta = calibration_metadata(cfg2)
    assert meta["file"] == str(path) and meta["verification"]["median_depth_residual_mm"] < 2.0


def test_a_node_needing_a_malformed_calibration_file_stops_with_its_name(tmp_path):
    bad = tmp_path / "cal.yaml"
    bad.write_text("T_base_camera: [[1, 0, 0], [0, 1, 0]]\n")
    data = yaml.safe_load((REPO / "config" / "sim.yaml").read_text())
    data["policy"]["calibration_file"] = str(bad)
    data["policy"]["checkpoint"] = str(REPO / "policies" / "checkpoints" / "twin_grasp_lift")
    data["recorder"] = {**(data.get("recorder") or {}), "out_dir": str(tmp_path / "episodes")}
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(yaml.safe_dump(data))
    log = tmp_path / "recorder.log"
    proc = start_node("robot_runtime.nodes.recorder_node", "-p", f"config_file:={cfg}", log_path=log)
    assert proc.wait(60) == 2
    text = log.read_text()
    assert str(bad) in text and "4x4" in text
