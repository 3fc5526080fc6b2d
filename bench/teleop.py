"""bench.teleop: retargeting + IK time per frame, input-to-command latency, recorder drops.

1. ``retarget_ik``: a tracked hand (Allegro fingertips shrunk to human size, the wrist
   moving 10 cm and turning 0.3 rad) through the teleop session: finger retargeting
   (dex-retargeting) plus the arm's damped-least-squares IK, per frame, in process.
2. On the twin (config/sim_teleop.yaml: sim_node, both controllers, teleop_node with the
   scripted expert, recorder_node), 10 episodes collected through the services:
   ``input_to_command`` is, per teleop target, from the input sample's acquisition to the
   time the controllers reach that target (the target's stamp: they interpolate to it) as
   logged by teleop_node; ``recorder_dropped_steps`` sums the 10 episodes' dropped steps.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import bench_env, latency, machine, write
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


def synthetic_hand(n: int, retargeter) -> list[np.ndarray]:
    """Keypoints [21, 3] of a hand whose fingers move between postures while the wrist moves."""
    hand = UrdfModel(build.hand_urdf_text())
    lim = np.array(D.HAND_LIMITS)
    rng = np.random.default_rng(0)
    a, b = (lim[:, 0] + rng.uniform(0.15, 0.75, 16) * (lim[:, 1] - lim[:, 0]) for _ in range(2))
    out = []
    for k in range(n):
        s = 0.5 - 0.5 * np.cos(2 * np.pi * k / n)
        P = hand.forward(a + s * (b - a))
        local = np.zeros((21, 3))
        for idx, link in zip(retargeter.task_idx, retargeter.task_links):
            local[idx] = P[link][:3, 3] / retargeter.scaling
        # Knuckles that give the hand frame its axes: middle along z, index/pinky across y.
        local[9], local[5], local[17] = [0, 0, 0.09], [0, 0.02, 0.09], [0, -0.03, 0.085]
        T = make_T(rot_exp([0.0, 0.0, 0.3 * s]), [0.1 * s, 0.0, 0.5])
        out.append(local @ T[:3, :3].T + T[:3, 3])
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


def bench_twin(tmp: Path) -> tuple[dict, int, int, int]:
    from robot_runtime.launcher import GraphSupervisor
    from robot_runtime.teleop.collect import DemoCollector, write_twin_collect_config

    path = write_twin_collect_config(tmp, REPO / "config")
    cfg = load_config(path)
    plan = node_plan(cfg, str(path))
    log = tmp / "teleop_timing.npz"
    plan = [p if p.name != "teleop_node" else type(p)(p.name, p.executable, p.module,
                                                      {**p.parameters, "timing_log": str(log)}) for p in plan]
    env = bench_env()
    os.environ.update(env)   # this process's collector joins the graph's DDS domain
    sup = GraphSupervisor(plan, env=env, stdout=open(tmp / "graph.log", "a"), stderr=open(tmp / "graph.err", "a"))
    sup.start()
    col = DemoCollector(timeout_s=90.0)
    results = []
    try:
        col.wait("the graph", lambda: "/recorder_node/status" in col.status and "/teleop_node/status" in col.status,
                 timeout=120.0)
        for i in range(EPISODES):
            ep = col.episode(i)
            results.append(ep)
            print(f"  episode {i + 1}/{EPISODES}: {'success' if ep.success else 'failure'}, "
                  f"dropped {sum(ep.dropped.values())}", file=sys.stderr, flush=True)
    finally:
        col.close()
        sup.shutdown()
    s = np.load(log)["samples"]
    to_command = (s[:, 2] - s[:, 0]) * 1e3
    dropped = sum(sum(e.dropped.values()) for e in results)
    return latency(to_command), dropped, len(results), sum(e.success for e in results)


def main() -> None:
    cfg = load_config(REPO / "config" / "sim_teleop.yaml")
    rik = bench_retarget_ik(cfg)
    with tempfile.TemporaryDirectory() as d:
        i2c, dropped, n, ok = bench_twin(Path(d))
    result = {"retarget_ik": rik, "input_to_command": i2c, "recorder_dropped_steps": dropped, "episodes": n,
              "successful_episodes": ok, "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"{'measure':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'n':>6s}")
    for k in ("retarget_ik", "input_to_command"):
        v = result[k]
        print(f"{k:28s} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v['max_ms']:8.2f} {v['n']:6d}")
    print(f"recorder dropped steps over {n} episodes: {dropped}; successful episodes {ok}/{n}")
    print(f"wrote {write('teleop', result)}")


if __name__ == "__main__":
    main()
