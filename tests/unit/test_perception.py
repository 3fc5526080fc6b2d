"""The one preprocessing path: depth image and object point cloud."""
from dataclasses import replace

import numpy as np
import pytest

from calibration.extrinsics import camera_pose_for, check_pose, load_camera_pose
from robot_runtime.config import config_from_dict
from robot_runtime.errors import ConfigError
from robot_runtime.perception.preprocess import (DepthPreprocess, PointCloudPreprocess, PreprocessError,
                                                 VisualPreprocessor, VisualSpec, backproject, depth_to_input,
                                                 depth_to_points)
from robot_runtime.transforms import optical_pose_look_at

K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])


def test_depth_input_crops_fills_clips_and_resizes_by_area():
    p = DepthPreprocess(crop=(0.0, 0.5, 0.5, 1.0), near=0.5, far=1.5, height=2, width=2)
    d = np.full((8, 8), 1.0, np.float32)
    d[0, 4:6] = 0.5       # top-left output cell (2x2 pixels): half at 0.5 m, half at 1.0 -> 0.75 m
    d[2, 6] = np.nan      # a hole in the bottom-right cell reads as 'far'
    d[3, 7] = 9.0         # beyond far: clipped
    d[:, :4] = 0.1        # outside the crop: ignored
    out = depth_to_input(d, p)
    assert out.shape == (2, 2) and out.dtype == np.float32
    expect_m = np.array([[0.75, 1.0], [1.0, (2 * 1.0 + 2 * 1.5) / 4]])
    np.testing.assert_allclose(out, (expect_m - 0.5) / 1.0, atol=1e-6)


def test_depth_input_of_non_integer_ratio_keeps_mean():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.4, 1.4, (37, 53)).astype(np.float32)
    p = DepthPreprocess(near=0.2, far=1.5, height=10, width=14)
    out = depth_to_input(d, p)
    assert out.shape == (10, 14)
    assert out.mean() == pytest.approx(((d - 0.2) / 1.3).mean(), abs=1e-5)


def test_depth_input_rejects_bad_frames_and_parameters():
    with pytest.raises(PreprocessError, match="2-D"):
        depth_to_input(np.zeros((4, 4, 3)), DepthPreprocess())
    with pytest.raises(PreprocessError, match="crop"):
        VisualPreprocessor(VisualSpec("depth", depth=DepthPreprocess(crop=(0.5, 0.2, 0, 1))))
    with pytest.raises(PreprocessError, match="near"):
        VisualSpec("depth", depth=DepthPreprocess(near=2.0, far=1.0)).check()


def test_backproject_recovers_a_plane_and_points_land_in_the_base_frame():
    depth = np.full((120, 160), 1.0, np.float32)
    pts = backproject(depth, K)
    assert pts.shape == (120 * 160, 3)
    np.testing.assert_allclose(pts[:, 2], 1.0)
    # the principal point's ray is the optical axis; pixel (u=159, v=59.5) is 0.4 m right at 1 m
    assert pts[:, 0].max() == pytest.approx((159 - 79.5) / 200.0)
    T = optical_pose_look_at([0.5, 0.0, 1.0], [0.5, 0.0, 0.0])   # looking straight down from 1 m
    p = PointCloudPreprocess(num_points=50, box_min=(0.0, -1, -0.1), box_max=(1.0, 1, 1), table_z=-1.0, stride=1)
    out = depth_to_points(depth, K, T, p, stamp=1.0)
    assert out.shape == (50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-6)   # the plane 1 m below the camera is z = 0


def test_point_cloud_drops_the_table_and_crops_to_the_box():
    T = optical_pose_look_at([0.5, 0.0, 1.0], [0.5, 0.0, 0.0])
    depth = np.full((120, 160), 1.0, np.float32)          # the table at z = 0
    depth[50:70, 70:90] = 0.9                              # a 10 cm tall object in the middle
    p = PointCloudPreprocess(num_points=100, box_min=(0.3, -0.3, -0.05), box_max=(0.7, 0.3, 0.5), table_z=0.0,
                             table_margin=0.01, stride=1)
    pts = depth_to_points(depth, K, T, p, stamp=2.0)
    np.testing.assert_allclose(pts[:, 2], 0.1, atol=1e-5)
    with pytest.raises(PreprocessError, match="no depth points"):
        depth_to_points(np.full((120, 160), 1.0, np.float32), K, T, p, stamp=2.0)


def test_point_sampling_is_deterministic_per_seed_and_frame():
    T = optical_pose_look_at([0.5, 0.0, 1.0], [0.5, 0.0, 0.0])
    rng = np.random.default_rng(1)
    depth = (1.0 - rng.uniform(0.0, 0.3, (120, 160))).astype(np.float32)
    p = PointCloudPreprocess(num_points=100, box_min=(-1, -1, 0.0), box_max=(2, 2, 1), table_z=0.0, stride=2, seed=7)
    a = depth_to_points(depth, K, T, p, stamp=3.25)
    assert np.array_equal(a, depth_to_points(depth, K, T, p, stamp=3.25))
    assert not np.array_equal(a, depth_to_points(depth, K, T, p, stamp=3.30))
    q = PointCloudPreprocess(**{**p.__dict__, "seed": 8})
    assert not np.array_equal(a, depth_to_points(depth, K, T, q, stamp=3.25))


def test_point_cloud_policy_needs_calibration():
    with pytest.raises(PreprocessError, match="calibration"):
        VisualPreprocessor(VisualSpec("pointcloud"))


def test_visual_spec_round_trips_and_names_missing_keys():
    spec = VisualSpec("pointcloud", points=PointCloudPreprocess(num_points=64, seed=3))
    assert VisualSpec.from_dict(spec.to_dict()) == spec
    d = spec.to_dict()
    del d["pointcloud"]["table_z"]
    with pytest.raises(PreprocessError, match="table_z"):
        VisualSpec.from_dict(d)


def test_calibration_file_and_twin_pose(tmp_path):
    f = tmp_path / "cal.yaml"
    T = optical_pose_look_at([0.5, -0.7, 0.4], [0.5, 0.0, 0.0])
    f.write_text("T_base_camera: " + str(T.tolist()) + "\n")
    np.testing.assert_allclose(load_camera_pose(f), T)
    f.write_text("T_base_camera: [[1, 0], [0, 1]]\n")
    with pytest.raises(ConfigError, match="4x4"):
        load_camera_pose(f)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(ConfigError, match="orthonormal"):
        check_pose(bad, "x.yaml")
    cfg = config_from_dict({})
    Tt = camera_pose_for(cfg)
    # the twin camera's optical axis points from its position toward its look-at point
    cam = cfg.twin.camera
    fwd = np.subtract(cam.look_at, cam.position)
    np.testing.assert_allclose(Tt[:3, 2], fwd / np.linalg.norm(fwd))


def test_self_filter_leaves_the_object_and_needs_the_joints():
    from robot_runtime.config import load_config
    from robot_runtime.twin.sim import TwinSimulation
    from policies.make_twin_checkpoint import twin_visual
    from tests.ros_probe import REPO

    cfg = load_config(REPO / "config" / "sim.yaml")
    sim = TwinSimulation(cfg.twin, cfg.robot)
    try:
        poses = sim.reset("grasp_lift", 10_000)
        obj = poses[sim.active_objects[0]].position
        depth, K = sim.render_depth(), sim.intrinsics()
        q = np.concatenate([sim.arm_state().position, sim.hand_state().position])
        spec = twin_visual(cfg)
        filtered = VisualPreprocessor(spec, sim.camera_pose())
        pts = filtered(depth, K, 1.0, q)
        # every point is on the object (radius <= 4 cm, 9 cm tall at most), none on the hand above it
        assert np.linalg.norm(pts[:, :2] - obj[:2], axis=1).max() < 0.06 and pts[:, 2].max() < 0.12
        whole = VisualPreprocessor(VisualSpec("pointcloud", points=replace(spec.points, robot_margin=0.0)),
                                   sim.camera_pose())(depth, K, 1.0)
        assert (np.linalg.norm(whole[:, :2] - obj[:2], axis=1) > 0.06).mean() > 0.5   # most of it is the robot
        with pytest.raises(PreprocessError, match="needs the joints"):
            filtered(depth, K, 1.0)
        assert VisualSpec.from_dict(spec.to_dict()) == spec
        old = spec.to_dict()
        del old["pointcloud"]["robot_margin"]        # checkpoints from before the filter still load
        assert VisualSpec.from_dict(old).points.robot_margin == 0.0
    finally:
        sim.close()


def _inside_all_pairs(filt, points, q, margin):
    """The self-filter's test for every point against every primitive (no culling)."""
    pts = np.asarray(points, float)
    hit = np.zeros(len(pts), bool)
    for kind, (T, sizes) in filt.robot.posed(q).items():
        local = (pts[None] - T[:, None, :3, 3]) @ T[:, :3, :3]
        if kind == "box":
            hit |= np.any(np.all(np.abs(local) <= sizes[:, None, :] / 2 + margin, axis=2), axis=0)
        elif kind == "cylinder":
            radial = np.hypot(local[..., 0], local[..., 1]) <= sizes[:, None, 0] + margin
            hit |= np.any(radial & (np.abs(local[..., 2]) <= sizes[:, None, 1] / 2 + margin), axis=0)
        else:
            hit |= np.any(np.linalg.norm(local, axis=2) <= sizes[:, None, 0] + margin, axis=0)
    return hit


def test_the_culled_self_filter_answers_exactly_as_testing_every_primitive():
    """Bounding spheres only skip work: on points packed around every primitive's surface
    (where a too-small sphere would miss corners) the answer is the all-pairs test's."""
    from robot_runtime import description as D
    from robot_runtime.perception.robot_filter import RobotSelfFilter

    filt = RobotSelfFilter()
    rng = np.random.default_rng(3)
    lo, hi = np.asarray(D.ALL_LIMITS).T
    for trial in range(6):
        q = rng.uniform(lo, hi) if trial else np.concatenate([D.ARM_HOME, np.zeros(16)])
        posed = filt.robot.posed(q)
        centres = np.concatenate([T[:, :3, 3] for T, _ in posed.values()])
        near = centres[rng.integers(len(centres), size=4000)] + rng.normal(0, 0.04, (4000, 3))
        pts = np.concatenate([near, rng.uniform(-0.5, 1.2, (2000, 3))])
        for margin in (0.0, 0.015, 0.05):
            got = filt.inside(pts, q, margin)
            want = _inside_all_pairs(filt, pts, q, margin)
            assert np.array_equal(got, want), (trial, margin, np.flatnonzero(got != want)[:5])
            assert 0 < want.sum() < len(pts)
    assert filt.inside(np.zeros((0, 3)), q, 0.01).shape == (0,)


def test_the_early_table_cut_keeps_exactly_the_points_the_crop_keeps():
    """depth_to_points leaves out points below the table before transforming them (a cheaper
    height estimate with 1 um to spare); on a tilted camera over points packed within 1e-9 m of
    the cut, its cloud is byte-identical to back-projecting, transforming and cropping them all."""
    from robot_runtime.perception.preprocess import frame_seed

    T = optical_pose_look_at([0.2, -0.6, 0.7], [0.55, 0.0, 0.0])
    p = PointCloudPreprocess(num_points=200, box_min=(-1.0, -1.0, -0.05), box_max=(2.0, 1.0, 1.0), table_z=0.0,
                             table_margin=0.01, stride=1)
    cut = p.table_z + p.table_margin
    rng = np.random.default_rng(5)
    h, w = 120, 160
    v, u = np.mgrid[0:h, 0:w]
    ray = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1) @ T[:3, :3].T
    depth = (cut - T[2, 3]) / ray[..., 2] + rng.normal(0, 1e-9, (h, w))   # each pixel's ray meets the cut plane
    depth[rng.random((h, w)) < 0.3] = 0.9                                  # and some land on objects above it
    depth[rng.random((h, w)) < 0.05] = np.nan
    got = depth_to_points(depth, K, T, p, stamp=3.0)
    pts = backproject(depth, K) @ T[:3, :3].T + T[:3, 3]                  # the whole cloud, then the crop
    keep = np.all((pts >= p.box_min) & (pts <= p.box_max), axis=1) & (pts[:, 2] > cut)
    pts = pts[keep]
    idx = frame_seed(p.seed, 3.0).choice(len(pts), p.num_points, replace=len(pts) < p.num_points)
    assert 0.2 * h * w < len(pts) < 0.8 * h * w                            # the cut runs through the cloud
    assert np.array_equal(got, pts[np.sort(idx)].astype(np.float32))


def test_the_compiled_point_path_gives_the_numpy_pipelines_bytes_on_twin_frames():
    """depth_to_points (compiled early cut and self-filter) against the plain numpy pipeline it
    replaced: back-project every pixel, transform, crop, test every point against every
    primitive, sample. Twin frames with the hand over the objects, several placements."""
    from robot_runtime.config import load_config
    from robot_runtime.perception.preprocess import frame_seed
    from robot_runtime.perception.robot_filter import RobotSelfFilter
    from robot_runtime.twin.sim import TwinSimulation
    from policies.make_twin_checkpoint import twin_visual
    from tests.ros_probe import REPO

    cfg = load_config(REPO / "config" / "sim.yaml")
    p = twin_visual(cfg).points
    filt = RobotSelfFilter()
    sim = TwinSimulation(cfg.twin, cfg.robot)
    try:
        for task, seed in (("grasp_lift", 10_001), ("grasp_drop", 10_002), ("grasp_pour", 10_003)):
            sim.reset(task, seed)
            depth, K, T = sim.render_depth(), sim.intrinsics(), sim.camera_pose()
            q = np.concatenate([sim.arm_state().position, sim.hand_state().position])
            for stamp in (0.05, 1.25):
                got = depth_to_points(depth, K, T, p, stamp, q)
                pts = backproject(depth, K, p.stride) @ T[:3, :3].T + T[:3, 3]
                keep = (np.all((pts >= p.box_min) & (pts <= p.box_max), axis=1)
                        & (pts[:, 2] > p.table_z + p.table_margin))
                pts = pts[keep]
                robot = _inside_all_pairs(filt, pts, q, p.robot_margin)
                assert 0 < robot.sum() < len(pts)
                pts = pts[~robot]
                idx = frame_seed(p.seed, stamp).choice(len(pts), p.num_points, replace=len(pts) < p.num_points)
                assert np.array_equal(got, pts[np.sort(idx)].astype(np.float32)), (task, seed, stamp)
    finally:
        sim.close()
