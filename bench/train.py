"""python -m bench.train: training speed on 1 and 2 processes, and from a set larger than its cache.

Records a synthetic interaction set (3000 episodes of 20 steps) (point-cloud policy input, as the twin's prior) with the
recorder, then runs ``robot-runtime pretrain`` on it, each run the same global batch and steps:

- ``one_process``: one process, every episode in memory;
- ``one_process_cached``: one process, the episodes read from disk through a cache a tenth of
  the set's size (the stand-in for a set ten times the RAM: each batch's episodes are mostly
  not held and are read ahead);
- ``two_processes``: ``torchrun --nproc-per-node 2`` (gloo on this CPU; each process one thread).

Steps per second come from the job's own training time (its provenance), windows per second
are steps x the global batch. On a GPU (``--device cuda``) the same runs measure the GPU. About
5 minutes on 2 cores. Writes bench/results/train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import require, write
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.data.recorder import EpisodeRecorder, RecorderInputs, Stamped
from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualPreprocessor, VisualSpec

REPO = Path(__file__).resolve().parents[1]
K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])


def record_set(folder: Path, episodes: int, steps: int, seed: int = 0) -> int:
    """A synthetic interaction set: joints moving smoothly, the depth (and so the point cloud)
    following them; returns the bytes of its policy inputs."""
    spec = VisualSpec("pointcloud", points=PointCloudPreprocess(box_min=(0.2, -0.5, -0.05), box_max=(0.9, 0.5, 0.5)))
    T = np.array([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, -0.4], [0, 0, 0, 1]])   # 0.4 m over the table
    rec = EpisodeRecorder(folder, 20.0, VisualPreprocessor(spec, T), np.arange(23),
                          {"joint_names": list(D.ALL_JOINTS)}, min_free_mb=1)
    rng = np.random.default_rng(seed)
    home = np.array(RuntimeConfig().robot.arm_home + RuntimeConfig().robot.hand_home)
    for e in range(episodes):
        t0 = 100.0 * (e + 1)
        rec.start("interaction", now=t0)
        direction = rng.normal(0, 0.3, 23)
        for k in range(steps):
            t, s = t0 + 0.05 * k, k / steps
            q, cmd = home + s * direction, home + (k + 1) / steps * direction
            depth = np.full((60, 80), 0.6 + 0.3 * s, np.float32)
            depth[:, : int(10 + 60 * s)] = 0.75
            rec.tick(t, RecorderInputs(Stamped(t, depth), K, Stamped(t, q[:7]), Stamped(t, q[7:]),
                                       Stamped(t, cmd[:7]), Stamped(t, cmd[7:])), now=t)
        rec.stop(True, now=t0 + 50)
    return episodes * steps * spec.points.num_points * 3 * 4


def run(data: Path, out: Path, nproc: int, steps: int, batch: int, device: str, cache_mb: float = 0.0) -> dict:
    args = [str(data), "--out", str(out), "--steps", str(steps), "--batch", str(batch), "--save-every", str(steps),
            "--eval-every", "0", "--nice", "0", "--progress-json", "--device", device,
            "--cache-mb", str(cache_mb), "--val-fraction", "0.05"]
    cmd = [sys.executable, "-m", "robot_runtime.cli", "pretrain", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "robot_runtime.cli", "pretrain", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed: {res.stderr[-2000:]}")
    prov = json.loads((out / "policy.json").read_text())["provenance"]
    secs = float(prov["train_s"])
    return {"processes": nproc, "cache_mb": cache_mb, "steps": steps, "global_batch": batch, "train_s": secs,
            "steps_per_s": steps / secs, "windows_per_s": steps * batch / secs, "device": prov["device"],
            "world": prov.get("world"), "visual_cache": prov.get("visual_cache")}


def main(argv=None) -> dict:
    require("bench.train", "torch")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=3000, help="episodes of 20 steps in the set")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=64, help="the global batch")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_bytes = record_set(tmp / "data", a.episodes, 20)
        cache_mb = data_bytes / 10 / 1e6
        runs = {"one_process": run(tmp / "data", tmp / "one", 1, a.steps, a.batch, a.device),
                "one_process_cached": run(tmp / "data", tmp / "cached", 1, a.steps, a.batch, a.device, cache_mb),
                "two_processes": run(tmp / "data", tmp / "two", 2, a.steps, a.batch, a.device)}
    base = runs["one_process"]["steps_per_s"]
    print(f"{a.episodes} episodes, policy inputs {data_bytes / 1e6:.1f} MB; global batch {a.batch}, {a.steps} steps\n")
    print(f"{'run':22s} {'steps/s':>9s} {'windows/s':>10s} {'vs one':>7s}")
    for name, r in runs.items():
        print(f"{name:22s} {r['steps_per_s']:9.2f} {r['windows_per_s']:10.0f} {r['steps_per_s'] / base:7.2f}")
    c = runs["one_process_cached"]["visual_cache"]
    print(f"\ncache: bound {c['max_mb']:.1f} MB (a tenth of the set), most held {c['peak_mb']:.1f} MB; "
          f"{c['loads']} reads, {c['misses']} of them waited for by a batch, {c['hits']} hits")
    result = {**runs, "set_visual_mb": data_bytes / 1e6, "cache_mb": cache_mb, "device": a.device,
              "cached_over_memory": runs["one_process_cached"]["steps_per_s"] / base,
              "two_over_one": runs["two_processes"]["steps_per_s"] / base,
              "gpu": None if a.device == "cpu" else runs["one_process"]["device"]}
    print(f"wrote {write('train', result)}")
    return result


if __name__ == "__main__":
    main()
