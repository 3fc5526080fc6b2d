"""Approach copies with the other objects moved (``finetune --move-others``), on a real twin demo."""
from pathlib import Path

import numpy as np
import pytest

from policies.augment import (approach_progress, approach_with_others_moved, detour_weight, detoured_approach,
                              fingertip_centre, grasp_step, scene_before_grasp, shifted_cell, turned_after_grasp)
from policies.bc import Episode, WindowSampler
from policies.errors import PolicyError
from robot_runtime import description as D

HAND = range(len(D.ARM_JOINTS), len(D.ALL_JOINTS))


@pytest.fixture(scope="module")
def drop_demo(tmp_path_factory):
    """A scripted grasp & drop demo recorded on the twin (seed 2) as a training episode, and where
    the cube and the bowl stood."""
    from robot_runtime.config import load_config
    from robot_runtime.data.dataset import load_for_training
    from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualSpec
    from robot_runtime.twin.rollout import TwinEpisodeRunner, record_scripted_demos

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    visual = VisualSpec("pointcloud", points=PointCloudPreprocess(robot_margin=0.015))
    folder = tmp_path_factory.mktemp("drop")
    demo, *others = record_scripted_demos(cfg, "grasp_drop", [2, 3, 4], folder, visual, progress=False)
    assert demo.success and all(o.success for o in others)
    runner = TwinEpisodeRunner(cfg, visual)
    try:
        placed = runner.sim.reset("grasp_drop", 2)
    finally:
        runner.close()
    ep = load_for_training([demo.file], visual_spec=visual.to_dict())[0]
    return ep, {k: np.asarray(placed[k].position) for k in ("cube", "bowl")}, visual, folder


def _model():
    from robot_runtime.kinematics import UrdfModel

    return UrdfModel.from_file(D.description_path(D.URDF_NAME))


def test_the_experts_approach_does_not_depend_on_the_bowl():
    """What makes a moved bowl's approach a demo: with the bowl elsewhere the expert's plan is the
    same up to the hand closing (the same draws), and differs after it (the carry goes to the bowl)."""
    from robot_runtime.config import load_config
    from robot_runtime.twin.rollout import make_expert

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    cube = (np.array([0.5, 0.12, 0.025]), np.array([1.0, 0, 0, 0]))
    plans = []
    for bowl_y in (-0.15, -0.05):
        poses = {"cube": cube, "bowl": (np.array([0.5, bowl_y, 0.0]), np.array([1.0, 0, 0, 0]))}
        expert = make_expert(cfg).prepare()
        plans.append(expert.plan("grasp_drop", poses, ["cube", "bowl"], np.asarray(cfg.robot.arm_home + cfg.robot.hand_home),
                                 np.random.default_rng(7)))
    a, b = plans
    close = next(i for i, w in enumerate(a) if np.abs(w.hand - a[0].hand).sum() > 0.5)
    for wa, wb in zip(a[: close + 1], b[: close + 1]):
        np.testing.assert_array_equal(wa.arm, wb.arm)
        assert wa.t == wb.t
    assert any(np.abs(wa.arm - wb.arm).max() > 0.05 for wa, wb in zip(a, b))


def test_the_copies_move_the_bowl_and_keep_the_cubes_approach(drop_demo):
    ep, placed, visual, _ = drop_demo
    model = _model()
    g = grasp_step(ep, HAND)
    scene = scene_before_grasp(ep, model, HAND)
    centre, radius = scene.centre, scene.radius
    assert scene.grasp == g
    # the object taken is the cube (its visible surface's centre, a few cm from its frame), the rest the bowl
    assert np.linalg.norm(centre - placed["cube"][:2]) < 0.03 and radius < 0.08
    bowl_here = scene.others_centre
    assert np.linalg.norm(bowl_here - placed["bowl"][:2]) < 0.04
    p = visual.points
    side = -np.sign(placed["cube"][1])                   # the side of the table away from the cube
    rect = np.array([[0.40, side * 0.12], [0.62, side * 0.30]])
    copies = approach_with_others_moved(ep, scene, rect, 5, np.random.default_rng(0), p.box_min, p.box_max)
    assert len(copies) == 5
    moved_to = []
    for c in copies:
        assert c.train_until == g and g > 20
        np.testing.assert_array_equal(c.q, ep.q)
        np.testing.assert_array_equal(c.actions, ep.actions)
        np.testing.assert_array_equal(c.visual[g + 1:], ep.visual[g + 1:])
        delta = c.visual[: g + 1] - ep.visual[: g + 1]
        near = np.linalg.norm(ep.visual[: g + 1, :, :2] - centre, axis=-1) <= radius
        assert np.all(delta[near] == 0)                             # the cube stays
        shift = delta[~near][:, :2]
        # the bowl moves as one (float32 points: a shift differs by an ulp or so), on the table
        assert np.ptp(shift, axis=0).max() < 1e-5 and np.abs(shift).max() > 0.01 and np.all(delta[~near][:, 2] == 0)
        moved_to.append(bowl_here + shift.mean(axis=0))
    moved_to = np.array(moved_to)
    assert np.all(moved_to >= rect.min(axis=0) - 1e-4) and np.all(moved_to <= rect.max(axis=0) + 1e-4)
    assert len(np.unique(np.round(moved_to, 3), axis=0)) == 5
    # no room: spots on the cube, or spots that would put part of the bowl outside the crop box
    on_cube = np.array([centre - 0.02, centre + 0.02])
    outside = np.array([[0.5, side * 0.47], [0.55, side * 0.49]])
    for rect in (on_cube, outside):
        assert approach_with_others_moved(ep, scene, rect, 3, np.random.default_rng(0), p.box_min, p.box_max) == []
    # the sampler's windows end at the grasp step in a copy
    from policies.schema import PolicySchema

    sampler = WindowSampler([copies[0]], PolicySchema.hop(visual), D.ALL_JOINTS)
    assert len(sampler) == g + 1 and sampler.where[:, 1].max() == g


def test_a_demo_that_never_closes_the_hand_or_has_no_cloud_is_refused():
    q = np.zeros((30, 23))
    still = Episode(q, q.copy(), np.zeros((30, 10, 3), np.float32))
    with pytest.raises(PolicyError, match="never closes the hand"):
        grasp_step(still, HAND)
    depth = Episode(q, q.copy(), np.zeros((30, 8, 8), np.float32))
    with pytest.raises(PolicyError, match="needs point clouds"):
        scene_before_grasp(depth, None, HAND)
    with pytest.raises(PolicyError, match="needs point clouds"):
        turned_after_grasp(depth, HAND, 0, [0.1])


def test_a_finetuning_job_trains_on_the_copies(drop_demo, tmp_path):
    """``move_others``, ``turn_carry``: the job adds 3 approach copies (the bowls moved within the
    rectangle the two demos' bowls span) and 2 turned carries of each of its two training demos
    (seeds 2-4, one held out) and trains on them."""
    from policies.finetune import FinetuneConfig, FinetuneError, FinetuneJob

    _, _, _, folder = drop_demo
    cfg = dict(steps=2, batch=8, save_every=10, seed=0, threads=1, nice=0, eval_every=0)
    job = FinetuneJob(folder, tmp_path / "ft", None, FinetuneConfig(move_others=3, turn_carry=2, **cfg))
    assert len(job.train_eps) == 2 and len(job.val_eps) == 1 and len(job.moved_eps) == 6 + 4
    moved, turned = job.moved_eps[:6], job.moved_eps[6:]
    assert all(c.train_until is not None and c.train_until < len(c.q) // 2 for c in moved)
    assert all(c.train_from > 0 and c.train_until is None for c in turned)
    assert job.run(bar=False).steps == 2
    with pytest.raises(FinetuneError, match="move_others -1"):
        FinetuneJob(folder, tmp_path / "ft2", None, FinetuneConfig(move_others=-1, **cfg))


def test_a_turned_carry_is_the_demos_carry_turned(drop_demo):
    """``turn_carry``: joint 1 plus the angle turns the whole arm and hand about the base's vertical
    exactly (the fingertips by forward kinematics), the clouds turn with it, relative arm targets
    stay, and training windows start at the grasp."""
    from policies.action import ActionSpec

    ep, _, _, _ = drop_demo
    model = _model()
    j1 = D.ALL_JOINTS.index("joint1")
    g = grasp_step(ep, HAND)
    (turned,) = turned_after_grasp(ep, HAND, j1, [0.3])
    R = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    for t in (g, len(ep.q) - 1):
        np.testing.assert_allclose(fingertip_centre(model, turned.q[t]), R @ fingertip_centre(model, ep.q[t]), atol=1e-9)
    np.testing.assert_allclose(turned.visual[g], ep.visual[g] @ R.T.astype(np.float32), atol=1e-6)
    assert turned.train_from == g and turned.window_ends == range(g, len(ep.q))
    spec = ActionSpec.fit([(ep.q, ep.actions)], 10, {"arm": "relative", "hand": "absolute"})
    t = np.arange(g, len(ep.q))
    np.testing.assert_allclose(spec.rows(turned.q, turned.actions, t), spec.rows(ep.q, ep.actions, t), atol=1e-12)



def test_a_shifted_cell_is_the_demo_at_another_placement_and_replays_there(drop_demo):
    """``shift_cell``: the copy starts at home, its flange follows the demo's plus the offset times
    the approach's progress (orientation kept), from the grasp on it is the demo moved whole, the
    clouds move with the offset and the hand is the demo's. Replayed on the twin with the objects
    moved by the offset, the copy's targets drop the cube in the bowl, the hand coming down on it
    (the demo's own targets there miss its centre by the offset)."""
    from robot_runtime.config import load_config
    from robot_runtime.twin.rollout import TwinEpisodeRunner

    ep, placed, visual, _ = drop_demo
    model = _model()
    scene = scene_before_grasp(ep, model, HAND)
    g = scene.grasp
    s = approach_progress(ep, model, g, D.FLANGE_FRAME)
    assert s[0] == 0.0 and np.all(np.diff(s) >= 0) and np.all(s[g:] == 1.0)
    p = visual.points
    region = (np.array([0.35, -0.3]), np.array([0.7, 0.3]))
    (c,) = shifted_cell(ep, scene, model, np.arange(7), *region, 1, np.random.default_rng(9), 0.06,
                        p.box_min, p.box_max, D.FLANGE_FRAME)
    d = (c.visual - ep.visual)[..., :2].reshape(-1, 2)
    assert np.ptp(d, axis=0).max() < 1e-5 and np.all(c.visual[..., 2] == ep.visual[..., 2])
    d = d.mean(axis=0)
    assert 0.05 < np.linalg.norm(d) <= 0.06
    np.testing.assert_array_equal(c.q[0], ep.q[0])
    np.testing.assert_array_equal(c.q[:, 7:], ep.q[:, 7:])
    np.testing.assert_array_equal(c.actions[:, 7:], ep.actions[:, 7:])
    for t in (0, g // 3, 2 * g // 3, g, len(ep.q) - 1):
        here, there = model.link_pose(ep.q[t], D.FLANGE_FRAME), model.link_pose(c.q[t], D.FLANGE_FRAME)
        np.testing.assert_allclose(there[:3, 3], here[:3, 3] + s[t] * np.append(d, 0.0), atol=1e-3)
        np.testing.assert_allclose(there[:3, :3], here[:3, :3], atol=1e-2)
    assert np.abs(np.diff(c.q[:, :7], axis=0)).max() < 2 * np.abs(np.diff(ep.q[:, :7], axis=0)).max()
    # outside the region, no copy
    assert shifted_cell(ep, scene, model, np.arange(7), scene.centre, scene.centre, 1,
                        np.random.default_rng(3), 0.05, p.box_min, p.box_max, D.FLANGE_FRAME) == []

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    runner = TwinEpisodeRunner(cfg, visual)
    try:
        def replay(targets):
            def drive(t, q, depth, K):
                return targets[min(int(round(t / runner.period)), len(targets) - 1)]
            return runner.run("grasp_drop", 2, drive, len(targets) * runner.period,
                              on_reset=lambda start, q: runner.sim.shift_objects(*d))
        bent, unbent = replay(c.actions), replay(ep.actions)
        assert bent.success
        # the hand comes down on the moved cube: 1.8 cm from its centre, against 3.7 cm for the
        # demo's own targets (the twin's hand still catches a cube 5 cm off its path)
        assert bent.closest_m < 0.025 and bent.closest_m < unbent.closest_m - 0.015
    finally:
        runner.close()


def test_a_detoured_approach_arrives_off_and_homes_in_on_the_demos_grasp(drop_demo, tmp_path):
    """``detour``: the copy starts at home, its flange leaves the demo's path by the drawn offset
    (at most the radius across, half of it up or down) where 10 cm of the way to the grasp is
    left, and is back on the demo's grasp when the hand closes; from there on, the hand and the
    clouds, it is the demo. Replayed on the demo's own placement the copy's targets still do the
    task. A finetuning job adds the copies, two per training demo."""
    from robot_runtime.config import load_config
    from robot_runtime.twin.rollout import TwinEpisodeRunner
    from policies.finetune import FinetuneConfig, FinetuneError, FinetuneJob

    ep, _, visual, folder = drop_demo
    model = _model()
    scene = scene_before_grasp(ep, model, HAND)
    g = scene.grasp
    w = detour_weight(ep, model, g, D.FLANGE_FRAME, 0.1)
    assert w[0] == 0.0 and 0.95 < w.max() <= 1.0 and np.all(w[g:] == 0.0)
    peak = int(np.argmax(w))
    (c,) = detoured_approach(ep, scene, model, np.arange(7), 1, np.random.default_rng(4), 0.04,
                             flange=D.FLANGE_FRAME)
    np.testing.assert_array_equal(c.q[0], ep.q[0])
    np.testing.assert_array_equal(c.visual, ep.visual)
    np.testing.assert_array_equal(c.q[:, 7:], ep.q[:, 7:])
    np.testing.assert_array_equal(c.q[g:], ep.q[g:])
    np.testing.assert_array_equal(c.actions[g:], ep.actions[g:])

    def flange(q, t):
        return model.link_pose(q[t], D.FLANGE_FRAME)[:3, 3]
    d = flange(c.q, peak) - flange(ep.q, peak)
    assert 0.005 < np.linalg.norm(d[:2]) <= 0.0401 and abs(d[2]) <= 0.0201
    for t in (g // 4, g // 2, peak, (peak + g) // 2):
        np.testing.assert_allclose(flange(c.q, t), flange(ep.q, t) + w[t] * d, atol=1e-3)
    assert np.abs(np.diff(c.q[:, :7], axis=0)).max() < 2 * np.abs(np.diff(ep.q[:, :7], axis=0)).max()

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    runner = TwinEpisodeRunner(cfg, visual)
    try:
        def drive(t, q, depth, K):
            return c.actions[min(int(round(t / runner.period)), len(c.actions) - 1)]
        assert runner.run("grasp_drop", 2, drive, len(c.actions) * runner.period).success
    finally:
        runner.close()

    job_cfg = dict(steps=1, batch=8, save_every=10, seed=0, threads=1, nice=0, eval_every=0)
    job = FinetuneJob(folder, tmp_path / "ft", None, FinetuneConfig(detour=2, **job_cfg))
    assert len(job.train_eps) == 2 and len(job.moved_eps) == 4
    with pytest.raises(FinetuneError, match="detour_radius 0.5"):
        FinetuneJob(folder, tmp_path / "ft2", None, FinetuneConfig(detour=1, detour_radius=0.5, **job_cfg))


def test_a_circle_fitted_to_the_arc_a_camera_sees_finds_the_axis():
    """``circle_centre``: a half-seen bottle's points (radius 3 cm, 2 mm noise, a few strays) give its
    axis within 2 mm, where their mean lies 1.9 cm toward the camera."""
    from policies.augment import circle_centre

    rng = np.random.default_rng(0)
    phi = rng.uniform(-np.pi / 2, np.pi / 2, 600)       # the side facing the camera at -y
    axis = np.array([0.52, 0.17])
    pts = axis + 0.03 * np.c_[np.sin(phi), -np.cos(phi)] + rng.normal(0, 0.002, (600, 2))
    pts[:6] += rng.uniform(-0.03, 0.03, (6, 2))
    assert np.linalg.norm(pts.mean(axis=0) - axis) > 0.015
    assert np.linalg.norm(circle_centre(pts) - axis) < 0.002


@pytest.fixture(scope="module")
def pour_demos(tmp_path_factory):
    """Two scripted grasp & pour demos recorded on the twin: seed 1 (the bottle on the left, the
    side grasp's heading +0.33 rad) as a training episode, and the folder with both."""
    from robot_runtime.config import load_config
    from robot_runtime.data.dataset import load_for_training
    from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualSpec
    from robot_runtime.twin.rollout import record_scripted_demos

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    visual = VisualSpec("pointcloud", points=PointCloudPreprocess(robot_margin=0.015))
    folder = tmp_path_factory.mktemp("pour")
    # stamped from a fixed time: the clouds' points (drawn seeded by the stamps) are the same every
    # run, so the axis fitted to them is too (from the wall clock, one run in many fitted 0.6 cm off)
    demo, other = record_scripted_demos(cfg, "grasp_pour", [1, 3], folder, visual, progress=False,
                                        stamp0=1.8e9)
    assert demo.success and other.success
    return load_for_training([demo.file], visual_spec=visual.to_dict())[0], visual, folder, cfg


def test_a_mirrored_side_grasp_keeps_the_right_hand_and_pours_on_the_mirrored_placement(pour_demos, tmp_path):
    """``mirrored_keeping_the_hand``: the copy starts at home with the demo's hand; at the grasp its
    fingers' heading is the demo's mirrored and the bottle sits in the palm where it sat in the
    demo's (within 1 cm); up to the grasp the bottle's points are the demo's moved to the mirrored
    place, the near side toward the camera as in a real view. It ends (the pour) in the demo's
    posture turned about the base's vertical: the bowl's mirror image is that turn, and the elbow and
    wrist keep the posture the expert pours with (a solve that carried its changes along ended with
    joint 5 a radian away, on a posture no real demo pours with). Replayed on the twin's mirrored placement the
    copy pours; the plain mirror image (the joints mirrored, a side grasp held thumb down) does not.
    A finetuning job trains on one copy per demo, and refuses both mirrors at once."""
    from policies.augment import STILL_FRAMES, _heading, circle_centre, mirrored_keeping_the_hand
    from policies.bc import mirror_episode
    from policies.finetune import FinetuneConfig, FinetuneError, FinetuneJob
    from robot_runtime.twin.rollout import TwinEpisodeRunner

    ep, visual, folder, cfg = pour_demos
    model = _model()
    scene = scene_before_grasp(ep, model, HAND)
    g = scene.grasp
    c = mirrored_keeping_the_hand(ep, scene, model, np.arange(7), D.FLANGE_FRAME,
                                  turn_joint=D.ALL_JOINTS.index("joint1"))
    assert c is not None
    np.testing.assert_array_equal(c.q[0], ep.q[0])
    np.testing.assert_array_equal(c.q[:, 7:], ep.q[:, 7:])
    np.testing.assert_array_equal(c.actions[:, 7:], ep.actions[:, 7:])
    assert _heading(model, ep.q[g]) > 0.2
    assert abs(_heading(model, c.q[g]) + _heading(model, ep.q[g])) < 0.01
    np.testing.assert_array_equal(c.visual[: g + 1, :, [0, 2]], ep.visual[: g + 1, :, [0, 2]])
    # the bottle's points are its own moved to the mirrored place: the side the camera (on the
    # right) sees stays toward the camera, where a mirror image shows the far side
    pooled = np.asarray(ep.visual[: min(g, STILL_FRAMES)]).reshape(-1, 3)
    axis = circle_centre(pooled[np.linalg.norm(pooled[:, :2] - scene.centre, axis=1) <= scene.radius, :2])
    seen = np.linalg.norm(ep.visual[0, :, :2] - scene.centre, axis=1) <= scene.radius
    offset = ep.visual[0, seen, 1].mean() - axis[1]
    assert offset < -0.01
    np.testing.assert_allclose(c.visual[0, seen, 1].mean() - (-axis[1]), offset, atol=0.001)
    moved = ep.visual[0, seen, 1] - c.visual[0, seen, 1]
    assert moved.std() < 1e-5 and abs(moved.mean() - 2.0 * axis[1]) < 1e-4
    assert np.abs(np.diff(c.q[:, :7], axis=0)).max() < 3 * np.abs(np.diff(ep.q[:, :7], axis=0)).max()
    bowl = circle_centre(scene.others)
    np.testing.assert_allclose(c.q[-1, 0], ep.q[-1, 0] - 2.0 * np.arctan2(bowl[1], bowl[0]), atol=0.01)
    np.testing.assert_allclose(c.q[-1, 1:7], ep.q[-1, 1:7], atol=0.02)
    np.testing.assert_allclose(c.actions[-1, 1:7], ep.actions[-1, 1:7], atol=0.02)

    runner = TwinEpisodeRunner(cfg, visual)
    try:
        bottle = np.asarray(runner.sim.reset("grasp_pour", 1)["bottle"].position)

        def in_palm(q, at):
            palm = model.link_pose(q, "palm")
            return palm[:3, :3].T @ (at - palm[:3, 3])
        # off by twice the fitted axis's error across the fingers (the fit is within 0.5 cm)
        np.testing.assert_allclose(in_palm(c.q[g], bottle * [1, -1, 1]), in_palm(ep.q[g], bottle), atol=0.01)

        def replay(targets):
            def drive(t, q, depth, K):
                return targets[min(int(round(t / runner.period)), len(targets) - 1)]
            return runner.run("grasp_pour", 1, drive, len(targets) * runner.period,
                              on_reset=lambda start, q: runner.sim.mirror_objects())
        assert replay(c.actions).success
        assert not replay(mirror_episode(ep, D.ALL_JOINTS).actions).success
    finally:
        runner.close()

    cfg = dict(steps=2, batch=8, save_every=10, seed=0, threads=1, nice=0, eval_every=0)
    job = FinetuneJob(folder, tmp_path / "ft", None, FinetuneConfig(mirror_keep_hand=True, **cfg))
    assert len(job.train_eps) == 1 and len(job.mirrored_eps) == 1 and job.unmirrored == 0
    assert job.run(bar=False).steps == 2
    with pytest.raises(FinetuneError, match="choose one"):
        FinetuneJob(folder, tmp_path / "ft2", None, FinetuneConfig(mirror=True, mirror_keep_hand=True, **cfg))
