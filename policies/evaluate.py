"""Evaluation on the twin: N rollouts of a checkpoint on a task, a success rate with its interval.

Each rollout resets the in-process twin with its own seed (a new random object placement),
runs the checkpoint closed loop through :class:`policies.closed_loop.ClosedLoopPolicy` (the
policy node's own tick: history, staleness checks, preprocessing, ONNX Runtime) on the
runner of :mod:`robot_runtime.twin.rollout` (the safety shield, the controllers' limits and
the hand PD), and judges success from ground-truth object poses at the end. Every rollout is
saved as an episode file (``robot-runtime data inspect`` / replay read it).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from policies.closed_loop import ClosedLoopPolicy, Frame, LiveRobot, LoadedPolicy
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.twin.rollout import EpisodeOutcome, TwinEpisodeRunner, map_seed_chunks

#: Rollout length per task (s): the scripted demos take 11-20 s.
DEFAULT_DURATION_S = {"grasp_lift": 16.0, "grasp_drop": 19.0, "grasp_pour": 22.0}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalReport:
    checkpoint: str
    task: str
    rollouts: list[EpisodeOutcome]
    seconds: float
    out_dir: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return sum(r.success for r in self.rollouts)

    @property
    def rate(self) -> float:
        return self.successes / max(len(self.rollouts), 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, len(self.rollouts))

    def line(self) -> str:
        lo, hi = self.interval
        return (f"{self.checkpoint} on {self.task}: {self.successes}/{len(self.rollouts)} = {self.rate:.2f} "
                f"(95% CI {lo:.2f}-{hi:.2f}), {self.seconds:.0f} s")

    def to_dict(self) -> dict:
        lo, hi = self.interval
        return {"checkpoint": self.checkpoint, "task": self.task, "n": len(self.rollouts), "successes": self.successes,
                "rate": self.rate, "ci95": [lo, hi], "seconds": round(self.seconds, 1), "out_dir": self.out_dir,
                "rollouts": [asdict(r) for r in self.rollouts], **self.extra}


def live_robot_of(runner: TwinEpisodeRunner, cfg: RuntimeConfig) -> LiveRobot:
    return LiveRobot(tuple(D.ALL_JOINTS), tuple(tuple(x) for x in D.ARM_LIMITS + D.HAND_LIMITS),
                     cfg.rates.policy_hz, runner.sim.camera_pose())


def evaluate(cfg: RuntimeConfig, checkpoint, task: str, n: int, seed0: int = 10_000, out_dir=None,
             duration_s: float | None = None, runner: str = "onnxruntime", progress: bool = True,
             workers: int = 1) -> EvalReport:
    """``n`` rollouts of ``checkpoint`` on ``task`` with seeds ``seed0 .. seed0 + n - 1`` (kept apart
    from the demo seeds), each saved under ``out_dir`` (None: not saved).

    ``workers`` > 1 runs the rollouts in that many processes (a rollout uses about one core);
    the report is the same as from one process, rollouts in seed order.
    """
    duration_s = duration_s or DEFAULT_DURATION_S[task]
    t0 = time.monotonic()
    seeds = list(range(seed0, seed0 + n))
    workers = max(1, min(workers, n))
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=n, desc=f"eval {task}" + (f" ({workers} processes)" if workers > 1 else ""), unit="rollout")

    def done(outcomes: list[EpisodeOutcome]) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
    try:
        if workers == 1:
            name, outcomes = _rollouts(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, done)
        else:
            name, outcomes = _rollouts_parallel(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, workers,
                                                done)
    finally:
        if bar is not None:
            bar.close()
    report = EvalReport(name, task, outcomes, time.monotonic() - t0, str(out_dir or ""))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(report.to_dict(), indent=1, default=_jsonable))
    return report


def _rollouts(cfg: RuntimeConfig, checkpoint, task: str, seeds, out_dir, duration_s: float, runner: str,
              done=None) -> tuple[str, list[EpisodeOutcome]]:
    """Roll ``checkpoint`` out once per seed in one process; returns (checkpoint name, outcomes)."""
    from policies.checkpoint import load_checkpoint  # noqa: PLC0415

    outcomes: list[EpisodeOutcome] = []
    schema = load_checkpoint(checkpoint).schema
    tw = TwinEpisodeRunner(cfg, schema.visual, out_dir, {"kind": "policy_rollout", "checkpoint": str(checkpoint)})
    try:
        loaded = LoadedPolicy.load(checkpoint, live_robot_of(tw, cfg), runner, warmup_steps=2)
        cl = ClosedLoopPolicy(loaded, tw.period, max_frame_age_s=tw.period, max_state_age_s=tw.period)
        for seed in seeds:
            cl.start()
            seq = iter(range(1 << 30))

            def drive(t, q, depth, K):
                return cl.tick(t, Frame(depth, K, t, next(seq)), (t, q), stamp_for=t + tw.period).q
            outcomes.append(tw.run(task, seed, drive, duration_s, note=f"rollout of {loaded.name}, seed {seed}"))
            cl.stop()
            if done is not None:
                done(outcomes)
    finally:
        tw.close()
    return loaded.name, outcomes


def _rollout_chunk(args) -> tuple[str, list[EpisodeOutcome]]:
    return _rollouts(*args)


def _rollouts_parallel(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, workers, done):
    if runner == "onnxruntime":   # export once here, not in every worker at the same time
        from policies.checkpoint import load_checkpoint  # noqa: PLC0415
        from policies.runners import EXPORT_VERSION, OPSET, export_onnx  # noqa: PLC0415

        ck = load_checkpoint(checkpoint)
        if ck.onnx_files(OPSET, EXPORT_VERSION) is None:
            export_onnx(ck)
    name, outcomes = "", []
    for name, chunk in map_seed_chunks(_rollout_chunk, seeds, workers, 5, lambda c: (
            cfg, checkpoint, task, c, None if out_dir is None else Path(out_dir) / f"seeds_{c[0]}", duration_s, runner)):
        for o in chunk:
            outcomes.append(o)
            done(outcomes)
    return name, sorted(outcomes, key=lambda o: o.seed)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def target_error(checkpoint, episodes) -> dict:
    """How far the network's next targets are from the demonstrated ones on recorded episodes,
    next to how far the demos move in a step: the scale of error closed-loop control has to
    live with. The window ending at every 5th step of each episode is run through the
    checkpoint (torch, eval mode) and the action read at its last step, as at deployment.

    Returns {"target_error_rad": [7] mean |predicted - demonstrated| per arm joint,
    "hand_target_error_rad": mean over the hand joints, "demo_step_rad": [7] mean |next target -
    measured| per arm joint, "windows": count}.
    """
    import torch  # noqa: PLC0415

    from policies.checkpoint import load_checkpoint  # noqa: PLC0415
    from policies.history import window_indices  # noqa: PLC0415
    from robot_runtime.data.dataset import load_for_training  # noqa: PLC0415

    ck = load_checkpoint(checkpoint)
    model, sch = ck.build_model().eval(), ck.schema
    eps = load_for_training(episodes, visual_spec=sch.visual.to_dict())
    idx = sch.index_in(D.ALL_JOINTS)
    inv = np.argsort(idx)
    err, step = [], []
    with torch.no_grad():
        for e in eps:
            for t in range(0, len(e.q), 5):
                w = window_indices(t, sch.history)
                prop = torch.from_numpy(sch.scale(e.q[w][:, idx])).float()[None]
                emb = model.encode_visual(torch.from_numpy(np.asarray(e.visual[w], np.float32)))[None]
                a, _ = model.trunk(prop, emb)
                pred = sch.unscale(a[0, -1].numpy())[inv]
                err.append(np.abs(pred - e.actions[t]))
                step.append(np.abs(e.actions[t] - e.q[t]))
    err, step = np.mean(err, axis=0), np.mean(step, axis=0)
    return {"target_error_rad": np.round(err[:7], 4).tolist(), "hand_target_error_rad": round(float(err[7:].mean()), 4),
            "demo_step_rad": np.round(step[:7], 4).tolist(), "windows": int(sum(len(range(0, len(e.q), 5)) for e in eps))}
