"""bench.fewshot: the lab's few-shot loop on the twin, measured end to end.

For grasp & lift and for grasp & drop:

1. record ``--demos`` scripted-expert demonstrations (seeds 0..) on the in-process twin,
   through the recorder's own EpisodeRecorder (:mod:`robot_runtime.twin.rollout`);
2. finetune with the HOP recipe (:class:`policies.finetune.FinetuneJob`) for ``--steps``
   steps, from scratch (``grasp_lift``, ``grasp_drop``) and from the project's prior
   (``grasp_lift_with_prior``, ``grasp_drop_with_prior``; ``--prior``, default
   ``policies/checkpoints/twin_prior``, pretrained on task-agnostic scripted interactions by
   ``python -m policies.make_twin_checkpoint --stage prior``);
3. evaluate ``--rollouts`` rollouts of each result on new placements (seeds 10000..):
   success from ground-truth object poses, with a 95% Wilson interval.

Recording and evaluation run in ``--workers`` processes; finetuning uses every core. The
defaults fit the benchmark's 10-minute budget on a 2-core CPU (``--device cuda`` on a GPU).

    python -m bench.fewshot [--demos 15] [--rollouts 20] [--steps 400] [--batch 32]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, write
from policies.checkpoint import load_checkpoint
from policies.evaluate import evaluate, target_error
from policies.finetune import FinetuneConfig, FinetuneJob
from policies.make_twin_checkpoint import DEMO_SEED0, EVAL_SEED0, PRIOR, load_twin_config
from robot_runtime.twin.rollout import record_scripted_demos_parallel

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=15)
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prior", default=str(PRIOR), help="checkpoint to finetune from (default: %(default)s)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=2, help="processes recording demos and running rollouts")
    ap.add_argument("--keep", help="keep demos, checkpoints and rollouts in this folder")
    a = ap.parse_args(argv)
    cfg = load_twin_config(REPO / "config" / "sim.yaml")
    prior = a.prior
    spec = load_checkpoint(prior).schema.visual   # one preprocessing for every run, the prior's
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fewshot_"))
    t_start = time.monotonic()
    runs = [("grasp_lift", "grasp_lift", None), ("grasp_drop", "grasp_drop", None),
            ("grasp_lift_with_prior", "grasp_lift", prior), ("grasp_drop_with_prior", "grasp_drop", prior)]
    demos: dict[str, dict] = {}
    result: dict = {"config": vars(a) | {"prior": prior}}
    for task in ("grasp_lift", "grasp_drop"):
        t0 = time.monotonic()
        out = record_scripted_demos_parallel(cfg, task, range(DEMO_SEED0, DEMO_SEED0 + a.demos),
                                             work / "demos" / task, spec, a.workers)
        demos[task] = {"dir": work / "demos" / task, "ok": sum(o.success for o in out), "s": time.monotonic() - t0}
        print(f"{task}: {demos[task]['ok']}/{a.demos} scripted demos successful ({demos[task]['s']:.0f} s)", flush=True)
    for name, task, base in runs:
        fc = FinetuneConfig(steps=a.steps, batch=a.batch, save_every=max(a.steps // 2, 1), device=a.device,
                            threads=os.cpu_count() or 1, nice=0)
        job = FinetuneJob(demos[task]["dir"], work / "checkpoints" / name, base, fc)
        ft = job.run(bar=True)
        rep = evaluate(cfg, ft.checkpoint, task, a.rollouts, EVAL_SEED0,
                       work / "rollouts" / name if a.keep else None, workers=a.workers)   # rollouts saved with --keep
        lo, hi = rep.interval
        result[name] = {"success_rate": rep.rate, "ci95": [round(lo, 3), round(hi, 3)], "demos": demos[task]["ok"],
                        "rollouts": len(rep.rollouts), "finetune_s": round(ft.seconds, 1), "steps": a.steps,
                        "train_loss": round(ft.train_loss, 4),
                        "val_loss": None if ft.val_loss is None else round(ft.val_loss, 4),
                        "eval_s": round(rep.seconds, 1), "base": base or "scratch",
                        **target_error(ft.checkpoint, demos[task]["dir"])}
        print(rep.line(), flush=True)
    result["demo_s"] = {t: round(d["s"], 1) for t, d in demos.items()}
    result["total_s"] = round(time.monotonic() - t_start, 1)
    path = write("fewshot", result)
    m = machine()
    print(f"\nbench.fewshot on {m['cpu']} ({m['cores']} cores), {a.demos} demos, {a.steps} steps of batch {a.batch}")
    print(f"{'run':24s} {'success':>8s} {'95% CI':>11s} {'demos':>6s} {'finetune s':>11s} {'val L1':>8s} "
          f"{'arm target error rad':>21s} {'demo step rad':>14s}")
    for name, _, _ in runs:
        r = result[name]
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        print(f"{name:24s} {r['success_rate']:8.2f} {r['ci95'][0]:5.2f}-{r['ci95'][1]:4.2f} {r['demos']:6d} "
              f"{r['finetune_s']:11.1f} {val:>8s} {np.mean(r['target_error_rad']):21.4f} {np.mean(r['demo_step_rad']):14.4f}")
    print(f"total {result['total_s']:.0f} s; wrote {path}; demos, checkpoints and rollouts in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
