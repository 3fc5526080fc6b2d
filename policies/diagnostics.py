"""What a lab looks at when a learned policy fails on the twin, cheapest rung first.

1. **Replay**: a demo's own recorded commands, replayed through the same twin runner on the
   same placement, must solve the task; if not, the fault is in execution, not learning.
2. **Open loop**: the checkpoint's targets against the demos' own, per joint and per chunk
   row, next to how far a demo moves in a step (:func:`policies.bc.open_loop_error`).
3. **Demo placements against new ones**: success where the demos were recorded (fitting)
   against new placements (generalising).
4. **Per rollout**: the closest the hand came to the object and how high it was lifted
   (:class:`robot_runtime.twin.rollout.EpisodeOutcome`).
5. **Pictures**: success against the number of demos, and one failed rollout's targets
   against the demo recorded on the same placement.
6. **Which phase fails** (twin tasks, with the scripted expert): the same new placements with
   the expert driving until a phase begins and the policy from there (:func:`phase_handover`):
   the policy from the start, from the descent to the object, from the lift, from the carry.
   Where success jumps, the phase before the jump is where the policy loses it.

:func:`diagnose` runs rungs 1-4 and the rollout picture; ``robot-runtime eval --demos DIR`` and
``bench.fewshot`` use it. ``eval --handover N`` and ``bench.fewshot --handover N`` run rung 6.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from policies.evaluate import EvalReport, replay_commands, target_error
from robot_runtime.config import RuntimeConfig


def demo_files(folder) -> list[Path]:
    """The successful, complete episode files under ``folder``, by name."""
    from robot_runtime.data.dataset import _expand  # noqa: PLC0415
    from robot_runtime.data.episode_file import read_meta  # noqa: PLC0415

    out = []
    for f in _expand(folder):
        m = read_meta(f)
        if m.get("success") is True and not m.get("partial"):
            out.append(Path(f))
    return sorted(out)


def rollout_summary(rep: EvalReport) -> dict:
    """Success and the per-rollout reach figures of an evaluation."""
    rs = rep.rollouts
    closest = [r.closest_m for r in rs if r.closest_m is not None]
    lift = [r.lift_m for r in rs if r.lift_m is not None]
    ends = [r.end_m for r in rs if r.end_m is not None]
    carried = [r.carried_m for r in rs if r.end_m is not None]   # None: never lifted
    lo, hi = rep.interval
    return {"success_rate": rep.rate, "ci95": [round(lo, 3), round(hi, 3)], "rollouts": len(rs),
            "seeds": [r.seed for r in rs], "successes": [bool(r.success) for r in rs],
            "closest_m": closest, "lift_m": lift,
            "closest_m_median": round(float(np.median(closest)), 4) if closest else None,
            "lift_m_median": round(float(np.median(lift)), 4) if lift else None,
            **({"carried_m": carried, "end_m": ends,
                "end_m_median": round(float(np.median(ends)), 4)} if ends else {}),
            "eval_s": round(rep.seconds, 1)}


#: The phases :func:`phase_handover` hands over at, per task (labels of the expert's plan; the
#: policy drives from the start of each).
HANDOVER_PHASES = {"grasp_lift": ("descend", "lift"), "grasp_drop": ("descend", "lift", "carry"),
                   "grasp_pour": ("descend", "lift", "carry")}


def phase_handover(cfg: RuntimeConfig, checkpoint, task: str, n: int, seed0: int = 10_000, phases=None,
                   workers: int = 1, out_dir=None, progress: bool = False) -> dict:
    """Success on the placements ``seed0 .. seed0 + n - 1`` with the scripted expert driving until
    each of ``phases`` begins and the policy from there (default :data:`HANDOVER_PHASES`), and with
    the policy throughout ('start'). Returns {"seeds": [first, n], "phases": {phase: rollout
    summary}}, phases in the order the policy takes over later and later."""
    from policies.evaluate import evaluate  # noqa: PLC0415

    phases = tuple(phases or HANDOVER_PHASES[task])
    out: dict = {"seeds": [int(seed0), int(n)], "phases": {}}
    for phase in ("start", *phases):
        rep = evaluate(cfg, checkpoint, task, n, seed0, None if out_dir is None else Path(out_dir) / phase,
                       progress=progress, workers=workers, expert_until=None if phase == "start" else phase)
        out["phases"][phase] = rollout_summary(rep)
    return out


def diagnose(cfg: RuntimeConfig, checkpoint, task: str, demos, out_dir, rollouts: int = 10,
             workers: int = 1, replay: bool = True) -> dict:
    """Rungs 1-4 and the rollout picture for ``checkpoint`` trained on the demos in ``demos``.

    Evaluates ``rollouts`` rollouts on the first demos' placements (their seeds); writes
    ``rollout_vs_demo.png`` in ``out_dir`` for the first failed one. Returns a dict for JSON.
    """
    from robot_runtime.data.episode_file import read_meta  # noqa: PLC0415

    out_dir = Path(out_dir)
    files = demo_files(demos)
    if not files:
        raise ValueError(f"no successful demos in {demos}")
    result: dict = {"open_loop": target_error(checkpoint, files)}
    seeds = {int(read_meta(f)["seed"]): f for f in files if isinstance(read_meta(f).get("seed"), int)}
    if replay and seeds:
        first = sorted(seeds)[0]
        o = replay_commands(cfg, seeds[first])
        result["replay"] = {"seed": first, "file": str(seeds[first]), "success": bool(o.success),
                            "lift_m": o.lift_m, "closest_m": o.closest_m}
    demo_seeds = sorted(seeds)[:rollouts]
    if demo_seeds:
        rep = _evaluate_seeds(cfg, checkpoint, task, demo_seeds, out_dir / "demo_seeds", workers)
        result["demo_seeds"] = rollout_summary(rep)
        failed = [r for r in rep.rollouts if not r.success and r.file]
        if failed:
            png = plot_rollout_against_demo(failed[0].file, seeds[failed[0].seed], out_dir / "rollout_vs_demo.png")
            result["rollout_vs_demo_png"] = str(png) if png else None
    return result


def _evaluate_seeds(cfg, checkpoint, task, seeds, out_dir, workers) -> EvalReport:
    """Rollouts on the given seeds (in ``workers`` processes), saved under ``out_dir``."""
    import time  # noqa: PLC0415

    from policies.evaluate import DEFAULT_DURATION_S, _rollouts, _rollouts_parallel  # noqa: PLC0415

    t0 = time.monotonic()
    seeds, workers = list(seeds), max(1, min(workers, len(seeds)))
    if workers == 1:
        name, outcomes = _rollouts(cfg, checkpoint, task, seeds, out_dir, DEFAULT_DURATION_S[task], "onnxruntime")
    else:
        name, outcomes = _rollouts_parallel(cfg, checkpoint, task, seeds, out_dir, DEFAULT_DURATION_S[task],
                                            "onnxruntime", workers, lambda _: None)
    return EvalReport(name, task, outcomes, time.monotonic() - t0, str(out_dir))


def _plt():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:   # pragma: no cover - installed with the teleop extra
        return None
    return plt


def _save(plt, fig, path, dpi: int) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders made) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_rollout_against_demo(rollout_file, demo_file, path) -> Path | None:
    """The arm joints' commanded targets (solid) and measured positions (dashed) of a rollout and
    of the demo recorded on the same placement, against time, plus the hand's mean flexion. PNG."""
    from robot_runtime.data.episode_file import load_episode  # noqa: PLC0415

    plt = _plt()
    if plt is None:
        return None
    ro, demo = load_episode(rollout_file, allow_partial=False), load_episode(demo_file, allow_partial=False)
    fig, axs = plt.subplots(2, 4, figsize=(14, 6))
    axs = axs.ravel()
    for j in range(8):
        ax = axs[j]
        for ep, colour, label in ((demo, "C0", "demo"), (ro, "C3", "rollout")):
            t = np.arange(len(ep["q"])) / float(ep.meta.get("rate_hz", 20.0))
            cmd = ep["command"][:, j] if j < 7 else ep["command"][:, 7:].mean(1)
            q = ep["q"][:, j] if j < 7 else ep["q"][:, 7:].mean(1)
            ax.plot(t, cmd, colour, lw=1.4, label=f"{label} target")
            ax.plot(t, q, colour, lw=0.8, ls="--", label=f"{label} measured")
        ax.set_title(f"joint{j + 1} (rad)" if j < 7 else "hand, mean of 16 joints (rad)", fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7)
    fig.suptitle(f"{Path(rollout_file).name} against {Path(demo_file).name} (seed {demo.meta.get('seed')})",
                 fontsize=10)
    return _save(plt, fig, path, dpi=80)


def plot_success_against_demos(curves: dict, path, rollouts: int | None = None) -> Path | None:
    """Success rate against the number of demos, one line per curve ``{label: {demos: rate}}``. PNG."""
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, pts) in enumerate(sorted(curves.items())):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], "o-", color=f"C{i}", label=label)
    ax.axhline(0.8, color="0.5", ls=":", lw=1, label="target 0.8")
    ax.set_xlabel("demos")
    ax.set_ylabel("success rate" + (f" ({rollouts} rollouts, new placements)" if rollouts else ""))
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path, dpi=90)


def write_json(path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
