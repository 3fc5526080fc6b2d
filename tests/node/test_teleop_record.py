"""Teleop + recorder on the twin with real rclpy over DDS.

The graph of config/sim_teleop.yaml: sim_node, both controllers, teleop_node with the
scripted expert, recorder_node. Five grasp & lift episodes are collected through the
services; every one must succeed and drop no step. Then the recorder is SIGKILLed in the
middle of an episode: the saved episodes stay loadable, the unfinished one is a
``.partial`` that loaders refuse and ``data recover`` turns into an episode marked partial.
"""
import os
import signal

import numpy as np
import pytest
from std_srvs.srv import Trigger

from robot_runtime.config import load_config
from robot_runtime.data.dataset import list_episodes, load_for_training
from robot_runtime.data.episode_file import load_episode, recover_partial
from robot_runtime.errors import EpisodeFileError
from robot_runtime.teleop.collect import DemoCollector, write_twin_collect_config
from tests.ros_probe import REPO, start_node, stop_node

NODES = ("sim_node", "arm_controller_node", "hand_controller_node", "teleop_node", "recorder_node")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teleop")
    cfg_path = write_twin_collect_config(tmp, REPO / "config")
    procs = {n: start_node(f"robot_runtime.nodes.{n}", "-p", f"config_file:={cfg_path}", log_path=tmp / f"{n}.log")
             for n in NODES}
    col = DemoCollector(timeout_s=60.0)
    try:
        col.wait("the recorder and teleop nodes", lambda: "/recorder_node/status" in col.status
                 and "/teleop_node/status" in col.status, timeout=90.0)
        yield col, procs, tmp
    finally:
        col.close()
        for p in procs.values():
            stop_node(p)


def test_scripted_expert_records_five_grasp_lift_episodes_without_dropped_steps(graph):
    """Every one of the five episodes succeeds. This was once loosened to five of up to six (a
    grasp lost now and then); since the expert plans on one IK branch, seeds 0-4 succeeded 10 of
    10 here, on an idle 2-core machine and beside two busy-looping processes, so it is strict again:
    a failure names its seed and the nodes' last log lines."""
    col, procs, tmp = graph
    results = [col.episode(seed) for seed in range(5)]
    logs = " | ".join((tmp / f"{n}.log").read_text()[-400:] for n in NODES)
    assert all(r.success for r in results), f"failed seeds {[r.seed for r in results if not r.success]}: {logs}"
    rows = list_episodes(tmp / "episodes")
    assert [r.status for r in rows] == ["ok"] * len(results)
    assert [load_episode(r.file).meta["success"] for r in results] == [r.success for r in results]
    # Every instant of the grid is recorded: no step is dropped.
    steps = sum(r.steps for r in rows)
    dropped = sum(sum(r.dropped.values()) for r in results)
    where = [[(round(t - load_episode(r.file)["t"][0], 2), why) for t, why in load_episode(r.file).meta["dropped_at"]]
             for r in results]   # seconds into the episode
    print(f"recorded {steps} steps, dropped {dropped}: {where}")
    assert dropped == 0, where
    for r in results:
        ep = load_episode(r.file)
        n = len(ep)
        assert ep.meta["task"] == "grasp_lift" and n > 80
        # On the 20 Hz grid: steps 50 ms apart; every gap is a counted dropped step.
        gaps = np.rint(np.diff(ep["t"]) / 0.05).astype(int) - 1
        assert np.all(gaps >= 0) and gaps.sum() == ep.meta["dropped_steps"], ep.meta["dropped"]
        assert np.allclose(np.diff(ep["t"])[gaps == 0], 0.05, atol=1e-5)
        policy = load_config(tmp / "teleop.yaml").policy   # the recorder keeps what the policy would act on
        assert np.all(ep["t"] - ep["depth_stamp"] <= policy.max_frame_age_s)
        assert np.all(ep["t"] - ep["arm_state_stamp"] <= policy.max_state_age_s)
        # The recorded command is what the controllers sent: it follows the measured joints.
        assert np.max(np.abs(ep["command"][:, :7] - ep["q"][:, :7])) < 0.2
        # The arm moved through the task and came from home.
        assert np.ptp(ep["q"][:, :7], axis=0).max() > 0.2
        assert ep["visual"].dtype == np.float32 and ep["depth"].dtype == np.uint16
    eps = load_for_training(tmp / "episodes")
    assert len(eps) == 5 and eps[0].actions.shape == eps[0].q.shape


def test_sigkill_mid_episode_keeps_saved_episodes_and_marks_the_partial_one(graph):
    col, procs, tmp = graph
    col.set_params("recorder_node", task="grasp_lift", operator_note="killed")
    assert col.call(Trigger, "/recorder_node/start_episode", Trigger.Request()).success
    col.wait("some recorded steps", lambda: col.status.get("/recorder_node/status", {}).get("steps", 0) >= 20)
    os.killpg(procs["recorder_node"].pid, signal.SIGKILL)
    procs["recorder_node"].wait(10)
    rows = list_episodes(tmp / "episodes")
    assert [r.status for r in rows].count("ok") == 5
    partial = [r for r in rows if r.status == "partial"]
    assert len(partial) == 1 and partial[0].steps >= 20, rows
    for r in rows:
        if r.status == "ok":
            load_episode(r.path)
    with pytest.raises(EpisodeFileError, match="unfinished recording"):
        load_episode(partial[0].path)
    assert len(load_for_training(tmp / "episodes")) == 5   # the successful ones: not the partial one
    out = recover_partial(partial[0].path)
    ep = load_episode(out, allow_partial=True)
    assert ep.meta["partial"] is True and ep.meta["success"] is None and len(ep) >= 20
    with pytest.raises(EpisodeFileError, match="partial"):
        load_episode(out)
