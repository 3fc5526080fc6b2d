"""bench.teleop: retargeting + IK time per frame, input-to-command latency, recorder drops.

1. ``retarget_ik``: a tracked hand (Allegro fingertips shrunk to human size, the wrist
   moving 10 cm and turning 0.3 rad) through the teleop session: finger retargeting
   (dex-retargeting) plus the arm's damped-least-squares IK, per frame, in process.
2. ``input_to_command``, end to end on the twin (sim_node, both controllers, teleop_node
   with the ``keypoints`` input): a keypoint file at 29.3 fps whose wrist jumps 3 cm every
   44 frames. Per jump, from the jump frame's acquisition stamp to the first arm
   ``/command`` (what the controller sends the arm, after the shield) that moves, and
   (``input_to_command_90pct``) to the command that has covered 90% of the move, which adds
   the teleop low-pass filter and the controller's speed and acceleration limits.
3. On the twin with the scripted expert and recorder_node (config/sim_teleop.yaml), 10
   episodes collected through the services; ``recorder_dropped_steps`` sums their dropped
   steps.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.common import bench_env, latency, machine, require, write
from robot_runtime import description as D
from robot_runtime.config import load_config
from robot_runtime.description import build
from robot_runtime.kinematics import UrdfModel
from robot_runtime.plan import node_plan
from robot_runtime.teleop.factory import make_session
from robot_runtime.teleop.session import TeleopSample
from robot_runtime.transforms import make_T, rot_exp

REPO = Path(__file__).resolve().parents[1]
EPISODES = 10
#: The latency run's keypoint file: frame rate (Hz), frames between wrist steps, step size (m).
STEP_FPS = 29.3
STEP_FRAMES = 44
STEP_M = 0.03


def hand_points(hand: UrdfModel, retargeter, posture) -> np.ndarray:
    """Keypoints [21, 3] in the hand's own frame of the Allegro fingertips at ``posture`` [16],
    shrunk to human size, with knuckles that give the hand frame its axes."""
    P = hand.forward(posture)
    local = np.zeros((21, 3))
    for idx, link in zip(retargeter.task_idx, retargeter.task_links):
        local[idx] = P[link][:3, 3] / retargeter.scaling
    # middle knuckle along z, index/pinky knuckles across y
    local[9], local[5], local[17] = [0, 0, 0.09], [0, 0.02, 0.09], [0, -0.03, 0.085]
    return local


def synthetic_hand(n: int, retargeter) -> list[np.ndarray]:
    """Keypoints [21, 3] of a hand whose fingers move between postures while the wrist moves."""
    hand = UrdfModel(build.hand_urdf_text())
    lim = np.array(D.HAND_LIMITS)
    rng = np.random.default_rng(0)
    a, b = (lim[:, 0] + rng.uniform(0.15, 0.75, 16) * (lim[:, 1] - lim[:, 0]) for _ in range(2))
    out = []
    for k in range(n):
        s = 0.5 - 0.5 * np.cos(2 * np.pi * k / n)
        T = make_T(rot_exp([0.0, 0.0, 0.3 * s]), [0.1 * s, 0.0, 0.5])
        out.append(hand_points(hand, retargeter, a + s * (b - a)) @ T[:3, :3].T + T[:3, 3])
    return out


def bench_retarget_ik(cfg, frames: int = 400) -> dict:
    cfg.teleop.input.type = "keypoints"
    session = make_session(cfg)
    kps = synthetic_hand(frames, session.retargeter)
    q = np.array(D.ARM_HOME + D.HAND_HOME)
    session.step(None, q, 0.0)
    session.engage()
    times = []
    for k, kp in enumerate(kps):
        t = k / 30
        t0 = time.perf_counter()
        q = session.step(TeleopSample(t, keypoints=kp), q, t)
        times.append((time.perf_counter() - t0) * 1e3)
    return latency(times[5:])


@contextmanager
def twin_graph(tmp: Path, config: Path, timing_log: Path | None = None):
    """The graph of ``config`` started as processes on its own DDS domain, and a
    :class:`DemoCollector` in this process that joins it (``timing_log``: teleop_node's)."""
    from robot_runtime.launcher import GraphSupervisor
    from robot_runtime.teleop.collect import DemoCollector

    plan = node_plan(load_config(config), str(config))
    if timing_log is not None:
        plan = [p if p.name != "teleop_node" else type(p)(p.name, p.executable, p.module,
                                                          {**p.parameters, "timing_log": str(timing_log)})
                for p in plan]
    env = bench_env()
    os.environ.update(env)   # this process's collector joins the graph's DDS domain
    sup = GraphSupervisor(plan, env=env, stdout=open(tmp / "graph.log", "a"), stderr=open(tmp / "graph.err", "a"))
    sup.start()
    col = DemoCollector(timeout_s=90.0)
    try:
        yield col
    finally:
        col.close()
        sup.shutdown()


def bench_twin(tmp: Path) -> tuple[int, int, int]:
    """10 scripted episodes through the recorder; returns (dropped steps, episodes, successes)."""
    from robot_runtime.teleop.collect import write_twin_collect_config

    results = []
    with twin_graph(tmp, write_twin_collect_config(tmp, REPO / "config")) as col:
        col.wait("the graph", lambda: "/recorder_node/status" in col.status and "/teleop_node/status" in col.status,
                 timeout=120.0)
        for i in range(EPISODES):
            ep = col.episode(i)
            results.append(ep)
            print(f"  episode {i + 1}/{EPISODES}: {'success' if ep.success else 'failure'}, "
                  f"dropped {sum(ep.dropped.values())} {ep.dropped or ''}", file=sys.stderr, flush=True)
    dropped = sum(sum(e.dropped.values()) for e in results)
    return dropped, len(results), sum(e.success for e in results)


def write_step_file(path: Path, retargeter) -> None:
    """A looping keypoint file at STEP_FPS: the hand holds still for STEP_FRAMES frames, its wrist
    jumps STEP_M sideways, holds, and jumps back (two steps a lap). STEP_FPS is not a multiple of
    the teleop rate, so the steps fall at every phase of the teleop loop, as a camera's would."""
    hand = UrdfModel(build.hand_urdf_text())
    lim = np.array(D.HAND_LIMITS)
    local = hand_points(hand, retargeter, lim[:, 0] + 0.3 * (lim[:, 1] - lim[:, 0]))
    kp = [local + [STEP_M * (k >= STEP_FRAMES), 0.0, 0.5] for k in range(2 * STEP_FRAMES)]
    np.savez(path, keypoints=np.array(kp), t=np.arange(2 * STEP_FRAMES) / STEP_FPS)


def step_latencies(acquired: np.ndarray, cmd_t: np.ndarray, cmd_q: np.ndarray, t_from: float) -> tuple[list, list]:
    """For each step sample after ``t_from``: ms from its acquisition to the first arm command
    that moves, and to the command that has covered 90% of the move.

    Args:
        acquired: every sample's acquisition time (s), from teleop_node's timing log; the
            first is the file's frame 0.
        cmd_t, cmd_q: the arm controller's ``/command`` stamps (s) [N] and positions [N, 7].
    """
    frame = np.round((acquired - acquired[0]) * STEP_FPS).astype(int) % (2 * STEP_FRAMES)
    steps = acquired[(frame % STEP_FRAMES == 0) & (acquired > t_from)]
    first, rise = [], []
    for a, nxt in zip(steps[:-1], steps[1:]):
        before = cmd_q[cmd_t <= a]
        window = (cmd_t > a) & (cmd_t < nxt)
        if not len(before) or window.sum() < 2:
            continue
        q0, t, q = before[-1], cmd_t[window], cmd_q[window]
        moved = np.abs(q - q0).max(axis=1)
        if moved.max() < 1e-4:     # a step the arm did not follow (clipped): nothing to time
            continue
        first.append((t[np.argmax(moved > 1e-6)] - a) * 1e3)
        done = np.linalg.norm(q - q0, axis=1) / np.linalg.norm(q[-1] - q0)
        rise.append((t[np.argmax(done >= 0.9)] - a) * 1e3)
    return first, rise


def bench_input_to_command(tmp: Path, laps: int = 6) -> tuple[dict, dict]:
    """The keypoints input plays a stepping wrist on the twin; the arm controller's ``/command``
    is probed. Returns latency summaries (ms) from the step frame's acquisition to the first
    command that moves, and to the command 90% of the way (filter and speed limits included)."""
    from sensor_msgs.msg import JointState

    from robot_runtime import ros_io
    from robot_runtime.interfaces import CONTROLLERS
    from robot_runtime.teleop.collect import write_twin_collect_config

    cfg = load_config(REPO / "config" / "sim_teleop.yaml")
    cfg.teleop.input.type = "keypoints"
    write_step_file(tmp / "steps.npz", make_session(cfg).retargeter)
    path = write_twin_collect_config(tmp, REPO / "config", recorder={"enabled": False},
                                     teleop={"input": {"type": "keypoints", "file": str(tmp / "steps.npz"),
                                                       "loop": True}})
    log = tmp / "step_timing.npz"
    commands: list[tuple[float, np.ndarray]] = []
    with twin_graph(tmp, path, timing_log=log) as col:
        col.node.create_subscription(JointState, "/arm_controller_node/command",
                                     lambda m: commands.append((ros_io.from_time_msg(m.header.stamp),
                                                                np.array(m.position))), ros_io.STATE_QOS)
        col.wait("the graph", lambda: "/teleop_node/status" in col.status, timeout=120.0)
        col._trigger("/teleop_node/engage")
        col.wait("both controllers armed", lambda: all(
            col.status.get(f"/{c}/status", {}).get("mode") == "armed" for c in CONTROLLERS))
        t_from, lap = time.time() + 1.0, 2 * STEP_FRAMES / STEP_FPS
        col.wait("the steps", lambda: commands and commands[-1][0] > t_from + laps * lap, timeout=laps * lap + 30.0)
    acquired = np.load(log)["samples"][:, 0]
    first, rise = step_latencies(acquired, np.array([c[0] for c in commands]),
                                 np.array([c[1] for c in commands]), t_from)
    return latency(first), latency(rise)


def main() -> None:
    require("bench.teleop", "mujoco", "dex_retargeting", "rclpy")
    cfg = load_config(REPO / "config" / "sim_teleop.yaml")
    rik = bench_retarget_ik(cfg)
    with tempfile.TemporaryDirectory() as d:
        first, rise = bench_input_to_command(Path(d))
    with tempfile.TemporaryDirectory() as d:
        dropped, n, ok = bench_twin(Path(d))
    result = {"retarget_ik": rik, "input_to_command": first, "input_to_command_90pct": rise,
              "recorder_dropped_steps": dropped, "episodes": n, "successful_episodes": ok,
              "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"{'measure':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'n':>6s}")
    for k in ("retarget_ik", "input_to_command", "input_to_command_90pct"):
        v = result[k]
        print(f"{k:28s} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v['max_ms']:8.2f} {v['n']:6d}")
    print(f"recorder dropped steps over {n} episodes: {dropped}; successful episodes {ok}/{n}")
    print(f"wrote {write('teleop', result)}")


if __name__ == "__main__":
    main()
