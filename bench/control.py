"""python -m bench.control: wake-up lateness of the 120 Hz arm and 300 Hz hand loops.

Runs the whole graph of ``make sim`` on the twin: sim_node, arm_controller_node,
hand_controller_node and the 20 Hz policy_node (which arms both controllers), each in
its own process. The controllers run the same tick
under two schedulers, in alternating phases of one run so machine noise hits both:

- ``deadline``: the project's loop (absolute deadlines, its own thread, SCHED_FIFO when
  the machine allows it, a short clock poll before each deadline);
- ``deadline_sched_other``: the same loop without real-time priority (what a machine
  that refuses SCHED_FIFO gets);
- ``ros_timer``: a plain ``rclpy`` ``create_timer`` at the same rate, the usual way.

Each controller records every tick's wake-up lateness (the time past its deadline)
and writes it when it stops. A *miss* is a tick more than half a period late. The
first seconds of each phase (start-up, arming) are left out. Writes
bench/results/control.json.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from bench.common import bench_env, latency, require, run_plan_for, write
from robot_runtime.config import load_config
from robot_runtime.plan import node_plan

REPO = Path(__file__).resolve().parent.parent
PHASE_S = float(os.environ.get("BENCH_PHASE_S", "25"))      # each phase runs this long
WARMUP_S = 5.0      # ticks in the first seconds of a phase are left out
ROUNDS = 2          # each round runs every variant once
VARIANTS = {  # name: (scheduling parameter, control.realtime_priority)
    "deadline": ("deadline", None),
    "deadline_sched_other": ("deadline", 0),
    "ros_timer": ("ros_timer", None),
}
LOOPS = {"arm_controller_node": ("arm", 120.0), "hand_controller_node": ("hand", 300.0)}


def run_phase(variant: str, out_dir: Path, config: Path, env: dict) -> dict[str, np.ndarray]:
    scheduling, priority = VARIANTS[variant]
    if priority is not None:
        data = yaml.safe_load(config.read_text())
        data["control"]["realtime_priority"] = priority
        data["policy"]["checkpoint"] = str(load_config(config).policy.checkpoint)   # absolute: the copy moves
        config = out_dir / f"{variant}.yaml"
        config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)
    plan = []
    logs = {}
    for spec in node_plan(cfg, str(config)):
        if spec.name in LOOPS:
            logs[spec.name] = out_dir / f"{spec.name}-{variant}-{time.monotonic_ns()}.npz"
            spec = replace(spec, parameters={**spec.parameters, "scheduling": scheduling,
                                             "timing_log": str(logs[spec.name])})
        plan.append(spec)
    run_plan_for(plan, PHASE_S, out_dir, variant, env)
    out = {}
    for name, path in logs.items():
        if not path.is_file():
            raise SystemExit(f"{name} wrote no timing log ({path}); see {out_dir}")
        data = np.load(path)
        rate = float(data["rate_hz"])
        out[name] = {"lateness_ms": data["lateness_ms"][int(WARMUP_S * rate):],
                     "scheduling": str(data["scheduling"])}
    return out


def main() -> dict:
    require("bench.control", "mujoco", "rclpy")
    env = bench_env()
    config = REPO / "config" / "sim.yaml"
    samples: dict[tuple[str, str], list[np.ndarray]] = {}
    sched_info: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        for rnd in range(ROUNDS):
            for variant in VARIANTS:
                print(f"round {rnd + 1}/{ROUNDS}: {variant} loops for {PHASE_S:g} s ...", flush=True)
                for name, res in run_phase(variant, Path(tmp), config, env).items():
                    samples.setdefault((name, variant), []).append(res["lateness_ms"])
                    sched_info[f"{name} {variant}"] = res["scheduling"]
    result: dict = {}
    rows = []
    for name, (part, hz) in LOOPS.items():
        period_ms = 1000.0 / hz
        for variant, key in (("deadline", f"{part}_{int(hz)}hz"),
                             ("deadline_sched_other", f"{part}_{int(hz)}hz_sched_other"),
                             ("ros_timer", f"rclpy_timer_{int(hz)}hz")):
            late = np.concatenate(samples[(name, variant)])
            misses = int(np.sum(late > 0.5 * period_ms))
            result[key] = {"lateness": latency(late), "miss_rate": misses / late.size, "misses": misses}
            rows.append((key, result[key]))
    for part, hz in (("arm", 120), ("hand", 300)):
        b = result[f"rclpy_timer_{hz}hz"]["lateness"]
        for key in (f"{part}_{hz}hz", f"{part}_{hz}hz_sched_other"):
            a = result[key]["lateness"]
            result[key]["p99_ratio_timer_over_this"] = b["p99_ms"] / max(a["p99_ms"], 1e-3)
    result["scheduling"] = sched_info
    result["phase_s"], result["warmup_s"], result["rounds"] = PHASE_S, WARMUP_S, ROUNDS
    path = write("control", result)
    print(f"\n{'loop':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'ticks':>9}{'misses':>8}{'miss %':>9}"
          f"{'timer p99 / this':>18}")
    for key, r in rows:
        lat = r["lateness"]
        ratio = r.get("p99_ratio_timer_over_this")
        print(f"{key:<26}{lat['p50_ms']:>9.3f}{lat['p99_ms']:>9.3f}{lat['max_ms']:>9.3f}{lat['n']:>9}"
              f"{r['misses']:>8}{100 * r['miss_rate']:>9.3f}" + (f"{ratio:>17.0f}x" if ratio else ""))
    print("(a p99 under 1 us is counted as 1 us in the ratio)")
    print(f"scheduling: {sched_info.get('hand_controller_node deadline', '?')}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
