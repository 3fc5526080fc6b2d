"""Make the twin's policies with the project's own few-shot pipeline: a prior pretrained on
task-agnostic interactions, then finetuned on a few demos of one task.

    python -m policies.make_twin_checkpoint [--stage all|prior|finetune|interactions] [--work DIR]
        [--prior-episodes 300] [--prior-steps 3000] [--demos 15] [--steps 1500] [--rollouts 20]
        [--shard I/N]

``--stage interactions --shard I/N`` records only the prior's interactions, and of them only the
seeds of shard ``I`` of ``N`` (seed 100000 + k for every k = I mod N), into
``WORK/interactions/shard-I-of-N``: run it on N machines (I = 0 .. N-1), each writing its own
folder, then gather the folders under one ``interactions`` folder (any copy: rsync, a shared
filesystem) and pretrain on it, ``robot-runtime pretrain WORK/interactions --out ...`` (under
torchrun on many GPUs): a folder is read with its subfolders, so the shards merge by sitting
side by side. The seeds of different shards never overlap and together are those one machine
would record.

1. ``prior`` (HOP's idea: pretrain on many hand-object interactions that belong to no task).
   Records ``--prior-episodes`` scripted interactions on the twin (seeds 100000 ..,
   :func:`robot_runtime.twin.rollout.interaction_episode`: in a grasp & lift scene or with two
   objects drawn at random, grasp one (from above, the bottle from the side), carry it to a
   random spot or over the other object, then set it down, let go, keep holding, or roll the
   bottle by a random angle), then trains a point-cloud HOP network on them from scratch with the few-shot
   recipe and action representation (:class:`policies.finetune.FinetuneJob`: chunks of
   arm-relative, hand-absolute targets, normalised by the interactions' statistics; batch 32):
   ``policies/checkpoints/twin_prior``.
2. ``finetune`` (the lab's loop). Records ``--demos`` scripted grasp & lift demos (seeds
   0 .., the task ``config/sim.yaml`` runs) and finetunes the prior on them with its visual
   encoder frozen, exactly what ``robot-runtime finetune DEMOS --base policies/checkpoints/twin_prior
   --freeze-encoder --steps 1500`` does:
   ``policies/checkpoints/twin_grasp_lift``, the checkpoint ``make sim`` runs. Then evaluates
   it over ``--rollouts`` new placements (seeds 10000 ..) and stores the result as
   ``eval.json`` in the checkpoint folder.

Every seed range is kept apart: the prior's interactions, the demos and the evaluation
placements never share an object placement.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from policies.evaluate import evaluate
from policies.finetune import FinetuneConfig, FinetuneJob
from robot_runtime.config import RuntimeConfig, config_from_dict, parse_yaml
from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualSpec
from robot_runtime.twin.rollout import INTERACTION, record_scripted_demos_parallel

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = Path(__file__).parent / "checkpoints"
PRIOR = CHECKPOINTS / "twin_prior"
SIM = CHECKPOINTS / "twin_grasp_lift"
PRIOR_SEED0 = 100_000
DEMO_SEED0 = 0
EVAL_SEED0 = 10_000


def twin_visual(cfg: RuntimeConfig) -> VisualSpec:
    """The twin policies' input: HOP's 100-point object cloud in the base frame: the cell above
    the table, with the robot's own points filtered out (1.5 cm around its primitives)."""
    return VisualSpec("pointcloud", points=PointCloudPreprocess(
        num_points=100, box_min=(0.2, -0.5, -0.05), box_max=(0.9, 0.5, 0.5),
        table_z=cfg.control.workspace.table_z, table_margin=0.01, stride=2, robot_margin=0.015))


def load_twin_config(path) -> RuntimeConfig:
    """The config file without its policy section's checkpoint: this module makes the checkpoint
    that ``config/sim.yaml`` names, so it must load before that checkpoint exists."""
    path = Path(path)
    data = parse_yaml(path.read_text(), path) or {}
    data["policy"] = {**(data.get("policy") or {}), "enabled": False, "checkpoint": ""}
    return config_from_dict(data, file=str(path), base_dir=path.parent)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _record(cfg: RuntimeConfig, task: str, seeds, data: Path, workers: int, reuse: bool) -> None:
    """Record one scripted episode per seed into ``data`` (emptied first), unless ``reuse`` and it
    already holds episodes."""
    if reuse and data.is_dir() and any(data.rglob("*.episode.npz")):
        return
    t0 = time.monotonic()
    res = record_scripted_demos_parallel(cfg, task, seeds, _fresh(data), twin_visual(cfg), workers)
    print(f"{task}: {sum(o.success for o in res)}/{len(res)} scripted episodes successful "
          f"({time.monotonic() - t0:.0f} s)", flush=True)


def shard_seeds(episodes: int, shard: int, shards: int) -> list[int]:
    """The interaction seeds of shard ``shard`` of ``shards`` (of the ``episodes`` one machine
    would record)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard}/{shards}: expected 0 <= I < N")
    return [PRIOR_SEED0 + k for k in range(shard, episodes, shards)]


def record_interaction_shard(cfg: RuntimeConfig, work: Path, episodes: int, shard: int, shards: int,
                             workers: int = 2) -> Path:
    """Record shard ``shard`` of ``shards`` of the prior's interactions into its own folder,
    ``work/interactions/shard-<shard>-of-<shards>`` (emptied first; the other shards untouched)."""
    folder = work / "interactions" / f"shard-{shard}-of-{shards}"
    t0 = time.monotonic()
    res = record_scripted_demos_parallel(cfg, INTERACTION, shard_seeds(episodes, shard, shards), _fresh(folder),
                                         twin_visual(cfg), workers)
    print(f"{INTERACTION} shard {shard}/{shards}: {sum(o.success for o in res)}/{len(res)} scripted episodes "
          f"successful in {folder} ({time.monotonic() - t0:.0f} s)", flush=True)
    return folder


def make_prior(cfg: RuntimeConfig, work: Path, episodes: int, steps: int, out: Path = PRIOR,
               workers: int = 2, batch: int = 64, reuse: bool = False) -> Path:
    """Record the interactions into ``work/interactions`` (``reuse``: keep those already there)
    and pretrain the prior into ``out``."""
    data = work / "interactions"
    _record(cfg, INTERACTION, range(PRIOR_SEED0, PRIOR_SEED0 + episodes), data, workers, reuse)
    fc = FinetuneConfig(steps=steps, batch=batch, val_fraction=0.05, save_every=max(steps // 5, 1),
                        threads=os.cpu_count() or 1, nice=0)
    result = FinetuneJob(data, _fresh(out), None, fc).run(bar=True)
    _ship(result.checkpoint)
    print(f"prior: {result.checkpoint}, train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}, "
          f"{result.seconds:.0f} s", flush=True)
    return result.checkpoint


def make_finetuned(cfg: RuntimeConfig, work: Path, demos: int, steps: int, rollouts: int, base: Path = PRIOR,
                   out: Path = SIM, task: str = "grasp_lift", workers: int = 2, batch: int = 32,
                   reuse: bool = False) -> Path:
    """Record ``demos`` scripted demos of ``task`` (``reuse``: keep those already there), finetune
    ``base`` on them into ``out``, evaluate."""
    data = work / f"demos_{task}"
    _record(cfg, task, range(DEMO_SEED0, DEMO_SEED0 + demos), data, workers, reuse)
    fc = FinetuneConfig(steps=steps, batch=batch, save_every=max(steps // 2, 1), threads=os.cpu_count() or 1, nice=0,
                        freeze_encoder=True)
    result = FinetuneJob(data, _fresh(out), base, fc).run(bar=True)
    print(f"{task}: {result.checkpoint}, val loss {result.val_loss:.4f}, {result.seconds:.0f} s", flush=True)
    if rollouts:
        rep = evaluate(cfg, result.checkpoint, task, rollouts, EVAL_SEED0, work / f"eval_{task}", workers=workers)
        (Path(result.checkpoint) / "eval.json").write_text(json.dumps(
            {k: v for k, v in rep.to_dict().items() if k not in ("rollouts", "out_dir")}
            | {"seeds": [EVAL_SEED0, EVAL_SEED0 + rollouts - 1]}, indent=1))
        print(rep.line(), flush=True)
    _ship(result.checkpoint)
    return result.checkpoint


def _ship(checkpoint: Path) -> None:
    """Keep only what the repository ships: the weights, policy.json and the loss curve (not the
    job's train state, its interval checkpoints or the ONNX exports, which are rebuilt on first
    load), with the base checkpoint's path made relative to the repository."""
    checkpoint = Path(checkpoint)
    (checkpoint / "train_state.pt").unlink(missing_ok=True)
    for extra in [checkpoint / "onnx", *checkpoint.glob("step_*")]:
        shutil.rmtree(extra, ignore_errors=True)
    meta_file = checkpoint / "policy.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("onnx", None)
    base = (meta.get("provenance") or {}).get("base")
    if isinstance(base, dict) and Path(base.get("path", "")).is_absolute():
        try:
            base["path"] = str(Path(base["path"]).resolve().relative_to(REPO))
        except ValueError:
            pass
    tmp = meta_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_file)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "config" / "sim.yaml"))
    ap.add_argument("--stage", default="all", choices=["all", "prior", "finetune", "interactions"])
    ap.add_argument("--shard", default="0/1", help="interactions: record shard I of N of the seeds (I/N), into "
                                                   "WORK/interactions/shard-I-of-N")
    ap.add_argument("--work", default="runs/make_twin_checkpoint", help="episodes and rollouts go here")
    ap.add_argument("--prior-episodes", type=int, default=300)
    ap.add_argument("--prior-steps", type=int, default=3000)
    ap.add_argument("--prior-batch", type=int, default=32)
    ap.add_argument("--demos", type=int, default=15)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="processes recording episodes")
    ap.add_argument("--reuse-data", action="store_true", help="train on the episodes already in --work")
    a = ap.parse_args(argv)
    cfg = load_twin_config(a.config)
    work = Path(a.work)
    t0 = time.monotonic()
    if a.stage == "interactions":
        try:
            shard, shards = (int(x) for x in a.shard.split("/"))
        except ValueError:
            ap.error(f"--shard {a.shard!r}: expected I/N, e.g. 0/4")
        record_interaction_shard(cfg, work, a.prior_episodes, shard, shards, a.workers)
        print(f"done in {time.monotonic() - t0:.0f} s")
        return 0
    if a.stage in ("all", "prior"):
        make_prior(cfg, work, a.prior_episodes, a.prior_steps, workers=a.workers, batch=a.prior_batch,
                   reuse=a.reuse_data)
    if a.stage in ("all", "finetune"):
        make_finetuned(cfg, work, a.demos, a.steps, a.rollouts, workers=a.workers, reuse=a.reuse_data)
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
