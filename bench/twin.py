"""python -m bench.twin: the twin's real-time factor and depth render time.

Runs the twin's real-time loop (physics, joint-state streams, depth on its render
thread) for 20 s under a scripted reach-and-grasp load, then renders 300 depth frames
at the default resolution back to back. Writes bench/results/twin.json.
"""
from __future__ import annotations

import time

import numpy as np

from bench.common import latency, require, write
from robot_runtime import description as D
from robot_runtime.config import TwinConfig
from robot_runtime.control.demo_motion import ReachGraspScript
from robot_runtime.control.pd import pd_torque
from robot_runtime.kinematics import UrdfModel
from robot_runtime.twin.runner import TwinRunner
from robot_runtime.twin.sim import DepthRenderer, TwinSimulation

RUN_S = 20.0


class CountingSink:
    def __init__(self):
        self.counts = {"arm": 0, "hand": 0, "depth": 0}
        self.rtf = []
        self.hand = None

    def arm_state(self, s, t): self.counts["arm"] += 1
    def hand_state(self, s, t): self.counts["hand"] += 1; self.hand = s
    def depth(self, d, K, t): self.counts["depth"] += 1
    def object_poses(self, p, t): pass
    def episode(self, *a): pass
    def statistics(self, st, t): self.rtf.append(st["real_time_factor"])


def main() -> dict:
    require("bench.twin", "mujoco")
    cfg = TwinConfig()
    sim = TwinSimulation(cfg)
    obj = next(p for p in sim.object_poses().values() if p.active)
    script = ReachGraspScript(UrdfModel.from_file(D.description_path(D.URDF_NAME)), D.ARM_HOME, D.HAND_HOME,
                              D.DEFAULT_MOUNT_XYZ, D.DEFAULT_MOUNT_RPY, 8.0)
    script.plan(sim.arm_state().position, obj.position)
    sink = CountingSink()
    runner = TwinRunner(sim, cfg, sink)
    runner.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < RUN_S:  # a 200 Hz command source, as the demo node is
        a, h = script.sample((time.monotonic() - t0) % 8.0)
        runner.command_arm(a)
        if sink.hand is not None:
            runner.command_hand(pd_torque(h, sink.hand.position, sink.hand.velocity, 3.0, 0.1, 0.7))
        time.sleep(0.005)
    stats = runner.statistics()
    runner.stop()
    wall = time.monotonic() - t0
    # Depth render time, back to back, at the default resolution (this thread's own context).
    sim2 = TwinSimulation(cfg)
    renderer = DepthRenderer(sim2.model, cfg.camera)
    scene = sim2.new_scene()
    times = []
    for i in range(330):
        sim2.step(5)
        t = time.perf_counter()
        sim2.snapshot(scene)
        renderer.render(scene)
        if i >= 30:
            times.append((time.perf_counter() - t) * 1e3)
    renderer.close()
    rtf_windows = [r for r in sink.rtf[2:]]
    result = {
        "real_time_factor": float(runner.pacer.steps_done * sim.dt / wall),
        "real_time_factor_windows": {"min": float(min(rtf_windows)), "mean": float(np.mean(rtf_windows))},
        "depth_render": latency(times),
        "stream_rates_hz": {k: v / wall for k, v in sink.counts.items()},
        "physics_hz": 1.0 / sim.dt,
        "image": f"{cfg.camera.width}x{cfg.camera.height}",
        "dropped_s": stats["dropped_s"],
    }
    path = write("twin", result)
    print(f"{'metric':32s} {'value':>12s}")
    print(f"{'real-time factor (20 s run)':32s} {result['real_time_factor']:12.4f}")
    print(f"{'  worst 1 s window':32s} {result['real_time_factor_windows']['min']:12.4f}")
    print(f"{'physics rate (Hz)':32s} {result['physics_hz']:12.0f}")
    for k, v in result["stream_rates_hz"].items():
        print(f"{k + ' stream (Hz)':32s} {v:12.1f}")
    d = result["depth_render"]
    print(f"{'depth render ' + result['image'] + ' p50 (ms)':32s} {d['p50_ms']:12.2f}")
    print(f"{'depth render p99 / max (ms)':32s} {d['p99_ms']:6.2f} /{d['max_ms']:5.2f}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
