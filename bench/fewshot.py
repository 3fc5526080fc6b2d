"""bench.fewshot: the lab's few-shot loop on the twin, measured end to end, with its diagnostics.

For each task (grasp & lift over the twin's four objects, grasp & drop, grasp & pour):

1. record ``--demos`` scripted-expert demonstrations on the in-process twin, at seeds 0 .. or
   at placements that cover the table (``--demo-placements cover``),
   through the recorder's own EpisodeRecorder (:mod:`robot_runtime.twin.rollout`), and run
   the demo audit on them (:mod:`robot_runtime.data.audit`);
2. finetune (:class:`policies.finetune.FinetuneJob`, the few-shot recipe: chunks of
   arm-relative, hand-absolute targets, warm-up and cosine LR, EMA, the forward pass in bf16
   where the hardware has it) from the project's prior (``--prior``, default
   ``policies/checkpoints/twin_prior``, its visual encoder frozen) on all the demos: the runs
   named by the task (``grasp_lift``, ``grasp_drop``, ``grasp_pour``; the JSON also carries
   them as ``*_with_prior``); and for the prior's gain and the curve of success against demos,
   on 5 of them (lift, drop: from scratch and from the prior) and on 10 (lift, from the prior;
   with ``--runs all`` from scratch too, and every task on all demos from scratch) (with
   ``cover`` the ones that cover the table best, else the first by seed);
3. evaluate ``--rollouts`` rollouts of each result on new placements (seeds 10000 ..):
   success from ground-truth object poses, with a 95% Wilson interval, and per rollout the
   closest approach to the object and the lift height;
4. diagnostics of each all-demo run (:func:`policies.diagnostics.diagnose`): the open-loop
   error per joint and per chunk row against the demo step, success on the demos' own
   placements, a replay of a demo's recorded commands, and a picture of a failed rollout's
   targets against its demo; a success-against-demos plot; with ``--handover N``, which phase
   fails (:func:`policies.diagnostics.phase_handover`).

Everything on, the default (the 8 runs of :data:`DEFAULT_RUNS`, the recipe below), is meant to
take at most the 40 minutes the project allows a benchmark on a 2-core CPU; the README gives the
measured time. On a 2-core Xeon with AMX a run from the prior takes about 3 minutes to finetune
and 1 to evaluate, one from scratch on 5 demos about 2 and 1, each all-demo run 1 more for its
diagnostics; on a CPU without bf16 hardware the finetuning takes about twice as long.
``--runs all`` adds the all-demo runs from scratch (``*_scratch``) and lift on 10 from scratch
(about 15 minutes more); ``--runs`` names some.
Recording and evaluation run in ``--workers`` processes; finetuning uses every core.

The recipe, on by default:

- ``--mirror``: each task's first demos are replayed mirrored across the base's x-z plane on
  mirrored placements, and a task whose mirrored replays all succeed trains on its demos and
  their mirror images (:func:`policies.bc.mirror_episode`); on the twin that is grasp & drop and
  grasp & lift (top grasps), not grasp & pour (the right hand's side grasp, mirrored, does not
  hold). A task whose mirror images fail is checked the same way with its demos mirrored keeping
  the hand (:func:`policies.augment.mirrored_keeping_the_hand`: the objects mirrored, the right
  hand's grasp kept) and trains on those when they all succeed: grasp & pour.
- ``--move-others 3`` and ``--turn-carry 2``: the runs of the tasks with a second object (drop,
  pour) also train on 3 copies of each demo's approach with that object moved, and on 2 copies
  of each demo from its grasp on with the cell turned about joint 1 (:mod:`policies.augment`).
- ``--hand-view 4,16`` on ``--hand-view-tasks grasp_pour``: pour's policies also see the means
  of the 4 and the 16 cloud points nearest the palm, in the palm's frame
  (:mod:`policies.hand_view`); drop's and lift's do not (it cost them in the README's ladder).
- ``--prior-steps 5000`` steps from the prior, ``--steps 800`` from scratch, batch 32.
- the all-demo runs hold one demo out and keep the weights with the lowest open-loop error on it
  among the evaluations of the job's second half (finetune's default); ``--few-demos-whole``:
  the runs on 5 and 10 demos train on all of them and keep the last weights
  (``--no-few-demos-whole`` holds one out as well, which leaves 4 of 5 to learn from).

Off by default: ``--shift-cell N`` (every task on N copies of each demo with the objects moved
across the table and the arm's path bent onto them) and ``--detour N`` (copies whose approach
arrives off and homes in on the object); ``--no-mirror``, ``--move-others 0``, ``--turn-carry 0``,
``--hand-view-tasks none`` turn the recipe's parts off.

    python -m bench.fewshot [--demos 15] [--rollouts 20] [--runs all | grasp_lift,grasp_drop,...]
                            [--steps 800] [--prior-steps 5000] [--no-mirror] [--move-others 3]
                            [--turn-carry 2] [--hand-view 4,16] [--hand-view-tasks grasp_pour]
                            [--no-few-demos-whole] [--shift-cell 3] [--detour 3] [--precision auto]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, require, write
from policies.bc import PRECISIONS
from policies.checkpoint import load_checkpoint
from policies.diagnostics import diagnose, phase_handover, plot_success_against_demos, rollout_summary
from policies.evaluate import evaluate, replay_commands
from policies.finetune import FinetuneConfig, FinetuneJob
from policies.make_twin_checkpoint import DEMO_SEED0, EVAL_SEED0, PRIOR, load_twin_config
from robot_runtime.cli import parse_counts
from robot_runtime.data.audit import audit_folder
from robot_runtime.twin.rollout import record_scripted_demos_parallel
from robot_runtime.twin.scene import covering_seeds

REPO = Path(__file__).resolve().parents[1]
TASKS = ("grasp_lift", "grasp_drop", "grasp_pour")
#: the tasks whose scene holds an object besides the one taken (``--move-others`` applies to them)
TWO_OBJECT_TASKS = ("grasp_drop", "grasp_pour")
#: demos of a task replayed mirrored before ``--mirror`` trains on its mirror images
MIRROR_CHECKS = 3


def plan_runs(demos: int, prior: str) -> list[tuple[str, str, int, str | None]]:
    """(name, task, demos, base) of every run the benchmark knows, in the order they run: each task
    on all the demos from the prior (the recipe's base; named by the task) and from scratch, and
    lift and drop on 5, lift on 10, from scratch and from the prior."""
    runs = [(t, t, demos, prior) for t in TASKS]
    runs += [(f"{t}_scratch", t, demos, None) for t in TASKS]
    for n, tasks in ((5, ("grasp_lift", "grasp_drop")), (10, ("grasp_lift",))):
        if n < demos:
            for t in tasks:
                runs += [(f"{t}_{n}demos", t, n, None), (f"{t}_{n}demos_with_prior", t, n, prior)]
    return runs


#: the runs a plain ``python -m bench.fewshot`` makes: everything the issue's targets are measured on
DEFAULT_RUNS = ("grasp_lift", "grasp_drop", "grasp_pour", "grasp_lift_5demos", "grasp_lift_5demos_with_prior",
                "grasp_drop_5demos", "grasp_drop_5demos_with_prior", "grasp_lift_10demos_with_prior")
#: names of the all-demo runs from the prior that the JSON also carries (the same run as the task's key)
WITH_PRIOR = {f"{t}_with_prior": t for t in TASKS}


def pick_runs(runs: list[tuple[str, str, int, str | None]], wanted: str) -> list[tuple[str, str, int, str | None]]:
    """The runs ``--runs`` names ('' : :data:`DEFAULT_RUNS`; 'all': every one), in plan order.

    Raises:
        SystemExit: a name is not a run (the message lists the known ones).
    """
    if wanted.strip() == "all":
        return runs
    names = [WITH_PRIOR.get(r.strip(), r.strip()) for r in wanted.split(",") if r.strip()] or list(DEFAULT_RUNS)
    known = {r[0] for r in runs}
    unknown = sorted(set(names) - known)
    if unknown:
        raise SystemExit(f"bench.fewshot: unknown runs {unknown}; known: {[r[0] for r in runs]} (or 'all')")
    return [r for r in runs if r[0] in names]


def link_demos(files: list[Path], folder: Path) -> list[Path]:
    """Link ``files`` into ``folder``, one link each: the recording workers each write their own
    ``seeds_<first seed>`` folder and their files' names (time and index) can be the same, so a
    link is named by its folder and its name.

    Raises:
        RuntimeError: the folder does not end up holding exactly these files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for f in files:
        link = folder / f"{f.parent.name}_{f.name}"
        if not link.exists():
            link.symlink_to(f.resolve())
        links.append(link)
    held = sorted(p.resolve() for p in folder.iterdir())
    if held != sorted(f.resolve() for f in files):
        raise RuntimeError(f"{folder}: holds {len(held)} demos, expected the {len(files)} linked")
    return links


def hand_view_tasks(text: str) -> tuple[str, ...]:
    """``--hand-view-tasks``: the tasks named (comma-separated), every one ('all') or none ('none', '').

    Raises:
        SystemExit: a name is not a task.
    """
    if text.strip() in ("all", "none", ""):
        return TASKS if text.strip() == "all" else ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise SystemExit(f"bench.fewshot: --hand-view-tasks: unknown tasks {unknown}; known: {list(TASKS)}")
    return names


def main(argv=None) -> int:
    require("bench.fewshot", "torch", "onnxruntime", "mujoco")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=15)
    ap.add_argument("--demo-placements", choices=["consecutive", "cover"], default="consecutive",
                    help="the demos' placements: seeds 0 .. (the runs with fewer demos take the first), or spread "
                         "over the table (robot_runtime.twin.scene.covering_seeds; the runs with fewer take the "
                         "ones of them that cover best)")
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--steps", type=int, default=800, help="finetuning steps of a run from scratch")
    ap.add_argument("--prior-steps", type=int, default=5000, help="finetuning steps of a run from the prior "
                                                                  "(its visual encoder frozen)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prior", default=str(PRIOR), help="checkpoint to finetune from (default: %(default)s)")
    ap.add_argument("--runs", default="", help="comma-separated run names, or 'all' (default: DEFAULT_RUNS; see "
                                               "plan_runs)")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="the training forward pass (finetune --precision; auto: bf16 where the hardware has it)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=2, help="processes recording demos and running rollouts")
    ap.add_argument("--keep", help="keep demos, checkpoints and rollouts in this folder")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                    help="train on each demo and its mirror image (finetune --mirror) for every task whose "
                         f"first {MIRROR_CHECKS} demos, mirrored, still do the task when replayed")
    ap.add_argument("--move-others", type=int, default=3, metavar="N",
                    help="train on N copies of each demo's approach with the other objects moved "
                         "(finetune --move-others) for the tasks with a second object")
    ap.add_argument("--turn-carry", type=int, default=2, metavar="N",
                    help="train on N copies of each demo from its grasp on, the cell turned about joint 1 "
                         "(finetune --turn-carry), for the tasks with a second object")
    ap.add_argument("--shift-cell", type=int, default=0, metavar="N",
                    help="train on N copies of each demo with the objects moved across the table and the arm's "
                         "path bent onto them (finetune --shift-cell), for every task")
    ap.add_argument("--shift-radius", type=float, default=0.05, metavar="M",
                    help="--shift-cell: the largest move across the table (default %(default)s m)")
    ap.add_argument("--detour", type=int, default=0, metavar="N",
                    help="train on N copies of each demo whose approach arrives off and homes in on the object "
                         "(finetune --detour), for every task")
    ap.add_argument("--hand-view", type=parse_counts, default=(4, 16), metavar="K[,K...]",
                    help="the hand's view (finetune --hand-view) of the --hand-view-tasks' policies (default 4,16)")
    ap.add_argument("--hand-view-tasks", default="grasp_pour", metavar="TASK[,TASK...]",
                    help="the tasks whose policies get the hand's view: comma-separated, 'all' or 'none' "
                         "(default %(default)s: it helps the side grasp and costs drop and lift)")
    ap.add_argument("--few-demos-whole", action=argparse.BooleanOptionalAction, default=True,
                    help="the runs on fewer demos (5, 10) train on all of them and keep the last weights, holding "
                         "none out to pick weights by (a lab with 5 demos keeps them all; the default)")
    ap.add_argument("--handover", type=int, default=0, metavar="N",
                    help="diagnostics of each full-demo run also say which phase fails: N new placements with the "
                         "scripted expert driving until each phase begins, the policy from there")
    a = ap.parse_args(argv)
    view_tasks = hand_view_tasks(a.hand_view_tasks)
    cfg = load_twin_config(REPO / "config" / "sim.yaml")
    prior = a.prior
    spec = load_checkpoint(prior).schema.visual   # one preprocessing for every run, the prior's
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fewshot_"))
    t_start = time.monotonic()
    runs = pick_runs(plan_runs(a.demos, prior), a.runs)
    result: dict = {"config": vars(a) | {"prior": prior}}
    demos: dict[str, dict] = {}
    for task in sorted({r[1] for r in runs}, key=TASKS.index):
        t0 = time.monotonic()
        folder = work / "demos" / task
        seeds = covering_seeds(task, a.demos, DEMO_SEED0) if a.demo_placements == "cover" \
            else list(range(DEMO_SEED0, DEMO_SEED0 + a.demos))
        out = record_scripted_demos_parallel(cfg, task, seeds, folder, spec, a.workers)
        ok = sorted((o for o in out if o.success), key=lambda o: o.seed)
        audit = audit_folder(folder)
        demos[task] = {"dir": folder, "files": [Path(o.file) for o in ok], "seeds": [o.seed for o in ok],
                       "ok": len(ok), "s": time.monotonic() - t0}
        result[f"{task}_demos"] = {"successful": len(ok), "recorded": a.demos, "seeds": seeds,
                                   "record_s": round(demos[task]["s"], 1),
                                   "audit_ok": audit.ok, "audit_warnings": audit.warnings(),
                                   "posture_std_rad": audit.to_dict()["posture_std_rad"]}
        if a.mirror:
            replays = [replay_commands(cfg, o.file, spec, mirrored=True).success for o in ok[:MIRROR_CHECKS]]
            demos[task]["mirror"] = bool(replays) and all(replays)
            result[f"{task}_demos"]["mirrored_replays"] = f"{sum(replays)}/{len(replays)}"
            print(f"{task}: {sum(replays)}/{len(replays)} mirrored demos do the task on mirrored placements: "
                  f"{'training on mirror images too' if demos[task]['mirror'] else 'not mirrored'}", flush=True)
            if not demos[task]["mirror"]:
                kept = [replay_commands(cfg, o.file, spec, mirrored=True, keep_hand=True) for o in ok[:MIRROR_CHECKS]]
                kept = [r is not None and r.success for r in kept]
                demos[task]["mirror_keep_hand"] = bool(kept) and all(kept)
                result[f"{task}_demos"]["mirrored_keeping_the_hand_replays"] = f"{sum(kept)}/{len(kept)}"
                print(f"{task}: {sum(kept)}/{len(kept)} demos mirrored keeping the hand do the task on mirrored "
                      f"placements: {'training on them too' if demos[task]['mirror_keep_hand'] else 'not mirrored'}",
                      flush=True)
        print(f"{task}: {len(ok)}/{a.demos} scripted demos successful ({demos[task]['s']:.0f} s); audit: "
              + ("one branch" if audit.ok else "; ".join(audit.warnings())), flush=True)
    for name, task, n, base in runs:
        subset = work / "demos" / f"{task}_{n}"
        if n < demos[task]["ok"]:      # n of the demos, as a lab with fewer demos would have
            keep = set(covering_seeds(task, n, among=demos[task]["seeds"])) if a.demo_placements == "cover" \
                else set(demos[task]["seeds"][:n])
            link_demos([f for f, sd in zip(demos[task]["files"], demos[task]["seeds"]) if sd in keep], subset)
        else:
            subset = demos[task]["dir"]
        fc = FinetuneConfig(steps=a.prior_steps if base else a.steps, batch=a.batch,
                            save_every=10 ** 9, device=a.device, threads=os.cpu_count() or 1, nice=0,
                            freeze_encoder=bool(base), mirror=demos[task].get("mirror", False),
                            mirror_keep_hand=demos[task].get("mirror_keep_hand", False),
                            move_others=a.move_others if task in TWO_OBJECT_TASKS else 0,
                            turn_carry=a.turn_carry if task in TWO_OBJECT_TASKS else 0,
                            shift_cell=a.shift_cell, shift_radius=a.shift_radius, detour=a.detour,
                            hand_view=a.hand_view if task in view_tasks else (), precision=a.precision,
                            **({"val_fraction": 0.0, "keep": "last"} if a.few_demos_whole and n < a.demos else {}))
        job = FinetuneJob(subset, work / "checkpoints" / name, base, fc)
        ft = job.run(bar=True)
        rep = evaluate(cfg, ft.checkpoint, task, a.rollouts, EVAL_SEED0, work / "rollouts" / name, workers=a.workers)
        kept = job.selected()
        r = {**rollout_summary(rep), "demos": len(job.episodes), "finetune_s": round(ft.seconds, 1),
             "steps": fc.steps, "train_loss": round(ft.train_loss, 4),
             "val_loss": None if ft.val_loss is None else round(ft.val_loss, 4), "base": base or "scratch",
             "selected_step": kept["step"], "open_loop_error_rad": kept["open_loop_error_rad"],
             "mirror": fc.mirror, "mirror_keep_hand": fc.mirror_keep_hand, "move_others": fc.move_others,
             "turn_carry": fc.turn_carry, "shift_cell": fc.shift_cell, "shift_radius": fc.shift_radius,
             "detour": fc.detour, "hand_view": list(fc.hand_view), "held_out": fc.val_fraction > 0,
             "precision": job.precision}
        if n == a.demos:
            r["diagnostics"] = diagnose(cfg, ft.checkpoint, task, subset, work / "diagnostics" / name,
                                        rollouts=min(10, a.rollouts), workers=a.workers)
            if a.handover:
                r["diagnostics"]["handover"] = phase_handover(cfg, ft.checkpoint, task, a.handover, EVAL_SEED0,
                                                              workers=a.workers)
        result[name] = r
        print(rep.line(), flush=True)
    for alias, name in WITH_PRIOR.items():   # BENCH.md's keys for the all-demo runs from the prior
        if name in result:
            result[alias] = {**result[name], "same_run_as": name}
    curves: dict[str, dict] = {}
    for name, task, n, base in runs:
        curves.setdefault(f"{task}, {'prior' if base else 'scratch'}", {})[result[name]["demos"]] = \
            result[name]["success_rate"]
    png = plot_success_against_demos(curves, work / "success_against_demos.png", a.rollouts)
    result["success_against_demos"] = {k: {str(d): v for d, v in c.items()} for k, c in curves.items()}
    result["success_against_demos_png"] = str(png) if png else None
    for t in ("grasp_lift", "grasp_drop"):
        s, p = result.get(f"{t}_5demos"), result.get(f"{t}_5demos_with_prior")
        if s and p:
            result[f"{t}_5demos_prior_gain"] = round(p["success_rate"] - s["success_rate"], 3)
    result["total_s"] = round(time.monotonic() - t_start, 1)
    path = write("fewshot", result)
    m = machine()
    print(f"\nbench.fewshot on {m['cpu']} ({m['cores']} cores), {a.rollouts} rollouts on new placements each")
    print(f"{'run':30s} {'success':>8s} {'95% CI':>11s} {'demos':>6s} {'finetune s':>11s} {'ol err rad':>11s} "
          f"{'demo seeds':>11s} {'reach cm':>9s} {'lift cm':>8s} {'end cm':>7s}")
    for name, _, _, _ in runs:
        r = result[name]
        d = r.get("diagnostics", {}).get("demo_seeds")
        print(f"{name:30s} {r['success_rate']:8.2f} {r['ci95'][0]:5.2f}-{r['ci95'][1]:4.2f} {r['demos']:6d} "
              f"{r['finetune_s']:11.1f} {r['open_loop_error_rad'] or np.nan:11.4f} "
              f"{'-' if d is None else format(d['success_rate'], '.2f'):>11s} "
              f"{100 * (r['closest_m_median'] or np.nan):9.1f} {100 * (r['lift_m_median'] or np.nan):8.1f} "
              f"{100 * (r.get('end_m_median') or np.nan):7.1f}")
    for name, _, _, _ in runs:
        h = result[name].get("diagnostics", {}).get("handover")
        if h:
            print(f"{name}: which phase fails ({h['seeds'][1]} placements; the expert drives until the phase, the "
                  f"policy from there): " + ", ".join(f"from {p} {v['success_rate']:.2f}" for p, v in h["phases"].items()))
    for t in ("grasp_lift", "grasp_drop"):
        if f"{t}_5demos_prior_gain" in result:
            print(f"{t}: 5 demos, prior minus scratch: {result[f'{t}_5demos_prior_gain']:+.2f}")
    print(f"total {result['total_s']:.0f} s; wrote {path}; demos, checkpoints, rollouts and plots in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
