"""Rerun logging: the robot's visuals, the throttle, the sinks, replay and eval --rrd read back."""
import re

import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.errors import DescriptionError
from robot_runtime.kinematics import UrdfModel
from robot_runtime.description.geometry import urdf_visuals
from robot_runtime.viz.rerun_log import LogThrottle

URDF = D.description_path(D.URDF_NAME)


def test_batched_quaternions_match_the_single_conversion():
    from robot_runtime.transforms import mat_to_quat, rpy_to_mat
    from robot_runtime.viz.rerun_log import mats_to_xyzw

    rng = np.random.default_rng(0)
    R = np.stack([rpy_to_mat(rng.uniform(-3, 3, 3)) for _ in range(200)] + [np.diag([1.0, -1, -1]), np.eye(3)])
    expect = np.array([np.roll(mat_to_quat(r), -1) for r in R])
    np.testing.assert_allclose(mats_to_xyzw(R), expect, atol=1e-9)


def test_urdf_visuals_cover_every_visual_of_known_links():
    text = URDF.read_text()
    vis = urdf_visuals(text)
    assert len(vis) == len(re.findall("<visual>", text))
    assert {v.link for v in vis} <= set(UrdfModel.from_file(URDF).links)
    assert {v.kind for v in vis} == {"box", "cylinder", "sphere"}
    bad = text.replace('<sphere radius="0.012"/>', '<mesh filename="tip.stl"/>', 1)
    with pytest.raises(DescriptionError, match="unsupported visual <mesh>"):
        urdf_visuals(bad)


def test_throttle_thins_under_load_says_so_and_recovers():
    th = LogThrottle(budget=0.2, window_s=1.0)
    assert th.account(0.1, 0.0) == ""
    msg = th.account(0.5, 1.0)                    # 60% of a 1 s window
    assert th.every == 2 and "60%" in msg and "every 2" in msg
    assert [th.heavy_due() for _ in range(4)] == [False, True, False, True]
    assert th.account(0.01, 2.0) != "" and th.every == 1   # 1%: back to every update
    for k in range(3, 12):
        th.account(0.9, float(k))
    assert th.every == th.max_every               # never thinner than max_every
    base = LogThrottle(budget=0.2, window_s=1.0, min_every=2)
    assert base.every == 2
    base.account(0.9, 0.0), base.account(0.9, 1.0)
    assert base.every == 4
    base.account(0.0, 2.0), base.account(0.0, 3.0), base.account(0.0, 4.0)
    assert base.every == 2                        # eases back to its base rate, not below


def test_bad_sink_and_missing_path_are_clear_errors(tmp_path):
    pytest.importorskip("rerun")
    from robot_runtime.viz.rerun_log import RolloutLogger, VizError

    with pytest.raises(VizError, match="one of spawn, connect, save, memory"):
        RolloutLogger("window")
    with pytest.raises(VizError, match="needs a file path"):
        RolloutLogger("save", "")
    with pytest.raises(VizError, match="no such .rrd"):
        from robot_runtime.viz.rerun_log import rrd_rows
        rrd_rows(tmp_path / "none.rrd")


def test_replay_logs_every_step_of_an_episode(tmp_path):
    pytest.importorskip("rerun")
    from robot_runtime.config import load_config
    from robot_runtime.data.episode_file import load_episode
    from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualSpec
    from robot_runtime.twin.rollout import TwinEpisodeRunner, make_expert
    from robot_runtime.viz.replay import log_episode
    from robot_runtime.viz.rerun_log import RolloutLogger, rrd_rows
    from tests.ros_probe import REPO

    cfg = load_config(REPO / "config" / "sim.yaml")
    runner = TwinEpisodeRunner(cfg, VisualSpec("pointcloud", points=PointCloudPreprocess()), tmp_path / "ep")
    try:
        expert = make_expert(cfg)
        out = runner.run("grasp_lift", 3, lambda t, q, d, K: expert.sample(t + runner.period)[0], 1.0,
                         on_reset=lambda start, q: expert.plan("grasp_lift", start, runner.sim.active_objects, q,
                                                               np.random.default_rng(3)))
    finally:
        runner.close()
    ep = load_episode(out.file)
    assert ep.meta["camera"]["width"] == 320 and len(ep.meta["camera"]["K"]) == 3   # the recorder keeps K
    rrd = tmp_path / "ep.rrd"
    logger = RolloutLogger("save", str(rrd))
    assert log_episode(logger, out.file) == len(ep) == 20
    logger.close()
    rows = rrd_rows(rrd)
    for ent in ("/joints/arm/measured", "/joints/hand/target", "/world/robot/cylinder",
                "/world/camera/depth", "/world/points"):
        assert rows.get(ent, 0) >= len(ep), (ent, rows.get(ent))
    assert rows["/events"] == 2            # the episode's start and its end (with success)


def test_eval_in_two_processes_matches_one_and_saves_rrd(tmp_path):
    pytest.importorskip("rerun")
    from robot_runtime.cli import main
    from robot_runtime.data.episode_file import load_episode
    from robot_runtime.viz.rerun_log import rrd_rows
    from tests.ros_probe import REPO

    ck = str(REPO / "policies" / "checkpoints" / "twin_grasp_lift")
    args = ["eval", ck, "--rollouts", "2", "--seed", "7", "--duration", "1.0"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--out", str(tmp_path / "two"), "--workers", "2", "--rrd"]) == 0
    one = sorted((tmp_path / "one").rglob("*.episode.npz"))
    two = sorted((tmp_path / "two").rglob("*.episode.npz"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        ea, eb = load_episode(a), load_episode(b)
        assert ea.meta["seed"] == eb.meta["seed"]
        np.testing.assert_allclose(ea["command"], eb["command"], atol=1e-6)   # same rollouts, either way
        rrd = b.with_name(b.name.replace(".episode.npz", ".rrd"))
        assert rrd_rows(rrd)["/joints/arm/target"] >= 20
