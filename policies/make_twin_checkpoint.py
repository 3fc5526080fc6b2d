"""Train the checkpoint ``make sim`` runs, from scripted motions on the twin.

    python -m policies.make_twin_checkpoint [--out policies/checkpoints/twin_reach_grasp]
        [--episodes 16] [--steps 2000] [--batch 64]

It plays the scripted reach-grasp-lift cycle (the one ``demo_motion_node`` shows) on the
twin for one object placement per seed, keeps (depth, joints, next target) at 20 Hz,
and behaviour-clones the HOP network on it with the HOP recipe (a smaller batch, to fit
a laptop CPU). The result is a depth-input HOP checkpoint that imitates the script; it
is a stand-in until teleoperated demos and finetuning replace it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from policies.bc import TrainConfig, train_bc
from policies.checkpoint import save_checkpoint
from policies.hop import HopArchitecture, HopPolicy
from policies.schema import PolicySchema
from policies.twin_demos import scripted_episodes
from robot_runtime import description as D
from robot_runtime.config import load_config
from robot_runtime.perception.preprocess import DepthPreprocess, VisualSpec

DEFAULT_OUT = Path(__file__).parent / "checkpoints" / "twin_reach_grasp"
#: The twin camera sees the cell between about 0.4 m and 1.5 m.
TWIN_DEPTH = DepthPreprocess(crop=(0.0, 1.0, 0.0, 1.0), near=0.3, far=1.6, height=60, width=80)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "config" / "sim.yaml"))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    visual = VisualSpec("depth", depth=TWIN_DEPTH)
    t0 = time.monotonic()
    seeds = range(1000, 1000 + a.episodes)
    episodes, _ = scripted_episodes(cfg, seeds, visual)
    t_data = time.monotonic() - t0
    arch = HopArchitecture(visual="depth", depth_size=TWIN_DEPTH.shape)
    schema = PolicySchema.hop(visual, policy_hz=cfg.rates.policy_hz)
    import torch  # noqa: PLC0415

    torch.manual_seed(a.seed)
    model = HopPolicy(arch)
    tc = TrainConfig(steps=a.steps, batch=a.batch, seed=a.seed)
    losses = train_bc(model, schema, episodes, D.ALL_JOINTS, tc)
    out = save_checkpoint(a.out, model, schema, onnx=False, provenance={
        "source": "policies.make_twin_checkpoint: behaviour cloning of the scripted reach-grasp-lift on the twin",
        "task": cfg.twin.task, "episodes": a.episodes, "episode_seeds": [int(s) for s in seeds],
        "steps_per_episode": int(len(episodes[0].q)), "train": vars(tc),
        "final_loss": float(np.mean(losses[-50:])), "data_s": round(t_data, 1),
        "train_s": round(time.monotonic() - t0 - t_data, 1)})
    print(f"wrote {out} (final L1 {np.mean(losses[-50:]):.4f}, {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
