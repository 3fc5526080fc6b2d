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
from typing import Callable

import numpy as np

from policies.bc import mirror_joints
from policies.closed_loop import ClosedLoopPolicy, Frame, LiveRobot, LoadedPolicy
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.twin.rollout import EpisodeOutcome, TwinEpisodeRunner, make_expert, map_seed_chunks

#: Rollout length per task (s): the scripted demos take about 9-12 s (lift), 12-15 s (drop), 22-25 s (pour).
DEFAULT_DURATION_S = {"grasp_lift": 14.0, "grasp_drop": 17.0, "grasp_pour": 26.0}


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
             workers: int = 1, expert_until: str | None = None) -> EvalReport:
    """``n`` rollouts of ``checkpoint`` on ``task`` with seeds ``seed0 .. seed0 + n - 1`` (kept apart
    from the demo seeds), each saved under ``out_dir`` (None: not saved).

    ``workers`` > 1 runs the rollouts in that many processes (a rollout uses about one core);
    the report is the same as from one process, rollouts in seed order.

    ``expert_until``: a phase of the scripted expert's plan (a waypoint label such as 'descend',
    'lift', 'carry'): the expert plans each placement and drives the robot until that phase
    begins, the policy from then on (:func:`handover_driver`). The policy sees every step
    from the start, so its history is full when it takes over. None: the policy throughout.
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
            name, outcomes = _rollouts(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, done, expert_until)
        else:
            name, outcomes = _rollouts_parallel(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, workers,
                                                done, expert_until)
    finally:
        if bar is not None:
            bar.close()
    report = EvalReport(name, task, outcomes, time.monotonic() - t0, str(out_dir or ""),
                        extra={"expert_until": expert_until} if expert_until else {})
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(report.to_dict(), indent=1, default=_jsonable))
    return report


def handover_driver(expert, task: str, until: str, period: float, active: Callable[[], tuple]):
    """(on_reset, choose) for a rollout whose first phases the scripted ``expert`` drives: at the reset
    it plans ``task`` on the placement (from ``default_rng(seed)``, as its demos were planned); until
    the phase ``until`` begins, ``choose(t, policy_target)`` returns the plan's target for the next
    step, then the policy's.

    Raises:
        ValueError: ``until`` is not a phase of the plan (the message lists the plan's phases).
    """
    state = {"t": 0.0}

    def on_reset(seed: int, start: dict, q: np.ndarray) -> None:
        expert.plan(task, start, active(), q, np.random.default_rng(seed))
        labels = [w.label for w in expert.waypoints]
        if until not in labels[1:]:
            raise ValueError(f"expert_until {until!r}: not a phase of the expert's {task} plan {labels[1:]}")
        i = labels.index(until, 1)
        state["t"] = expert.waypoints[i - 1].t      # the phase begins where the one before it ended

    def choose(t: float, policy_target):
        return expert.sample(t + period)[0] if t + period <= state["t"] + 1e-9 else policy_target
    return on_reset, choose


def _rollouts(cfg: RuntimeConfig, checkpoint, task: str, seeds, out_dir, duration_s: float, runner: str,
              done=None, expert_until: str | None = None) -> tuple[str, list[EpisodeOutcome]]:
    """Roll ``checkpoint`` out once per seed in one process; returns (checkpoint name, outcomes)."""
    from policies.checkpoint import load_checkpoint  # noqa: PLC0415

    outcomes: list[EpisodeOutcome] = []
    schema = load_checkpoint(checkpoint).schema
    source = {"kind": "policy_rollout", "checkpoint": str(checkpoint)} | ({"expert_until": expert_until}
                                                                         if expert_until else {})
    tw = TwinEpisodeRunner(cfg, schema.visual, out_dir, source)
    try:
        loaded = LoadedPolicy.load(checkpoint, live_robot_of(tw, cfg), runner, warmup_steps=2)
        cl = ClosedLoopPolicy(loaded, tw.period, max_frame_age_s=tw.period, max_state_age_s=tw.period)
        handover = None
        if expert_until:
            handover = handover_driver(make_expert(cfg), task, expert_until, tw.period, lambda: tw.sim.active_objects)
        for seed in seeds:
            cl.start()
            seq = iter(range(1 << 30))

            def drive(t, q, depth, K):
                target = cl.tick(t, Frame(depth, K, t, next(seq)), (t, q), stamp_for=t + tw.period).q
                return handover[1](t, target) if handover else target
            on_reset = (lambda start, q, s=seed: handover[0](s, start, q)) if handover else None
            note = f"rollout of {loaded.name}, seed {seed}" + (f", the expert until {expert_until}" if handover else "")
            outcomes.append(tw.run(task, seed, drive, duration_s, note=note, on_reset=on_reset))
            cl.stop()
            if done is not None:
                done(outcomes)
    finally:
        tw.close()
    return loaded.name, outcomes


def _rollout_chunk(args) -> tuple[str, list[EpisodeOutcome]]:
    return _rollouts(*args)


def _rollouts_parallel(cfg, checkpoint, task, seeds, out_dir, duration_s, runner, workers, done, expert_until=None):
    if runner == "onnxruntime":   # export once here, not in every worker at the same time
        from policies.checkpoint import load_checkpoint  # noqa: PLC0415
        from policies.onnx_export import EXPORT_VERSION, OPSET, export_onnx  # noqa: PLC0415

        ck = load_checkpoint(checkpoint)
        if ck.onnx_files(OPSET, EXPORT_VERSION) is None:
            export_onnx(ck)
    name, outcomes = "", []
    for name, chunk in map_seed_chunks(_rollout_chunk, seeds, workers, 5, lambda c: (
            cfg, checkpoint, task, c, None if out_dir is None else Path(out_dir) / f"seeds_{c[0]}", duration_s, runner,
            None, expert_until)):
        for o in chunk:
            outcomes.append(o)
            done(outcomes)
    return name, sorted(outcomes, key=lambda o: o.seed)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def target_error(checkpoint, episodes, every: int = 5) -> dict:
    """How far the network's targets are from the demonstrated ones on recorded episodes, next to
    how far the demos move in a step: the scale of error closed-loop control has to live with.
    The window ending at every ``every``-th step of each episode is run through the checkpoint
    (torch, eval mode) and its chunk compared with the targets the demo sent (see
    :func:`policies.bc.open_loop_error`).

    Returns {"target_error_rad": [7] mean |predicted - demonstrated| of the next target per arm
    joint, "hand_target_error_rad": its mean over the hand joints, "target_error_by_row_rad": [H]
    arm error per chunk row, "demo_step_rad": [7] mean |next target - measured| per arm joint,
    "windows": count}.
    """
    from policies.bc import open_loop_error  # noqa: PLC0415
    from policies.checkpoint import load_checkpoint  # noqa: PLC0415
    from robot_runtime.data.dataset import load_for_training  # noqa: PLC0415

    ck = load_checkpoint(checkpoint)
    eps = load_for_training(episodes, visual_spec=ck.schema.visual.to_dict())
    r = open_loop_error(ck.build_model().eval(), ck.schema, eps, D.ALL_JOINTS, every=every)
    return {"target_error_rad": r["per_joint"][:7], "hand_target_error_rad": round(float(np.mean(r["per_joint"][7:])), 5),
            "target_error_by_row_rad": r["per_row"], "demo_step_rad": r["demo_step"][:7], "windows": r["windows"]}


def replay_commands(cfg: RuntimeConfig, episode_file, visual=None, mirrored: bool = False,
                    keep_hand: bool = False) -> EpisodeOutcome | None:
    """Replay the commands an episode recorded through the same twin runner, on the same object
    placement (its seed), and judge it the same way.

    The rung below learning on the diagnostic ladder: a demo whose own commands fail when
    replayed puts the fault in execution (the runner, the shield, the physics), not in the policy.

    ``mirrored``: the commands mirrored across the base's x-z plane
    (:func:`policies.bc.mirror_joints`) on the placement mirrored the same way (every object at
    y -> -y, its yaw negated): whether the demo's mirror image, which ``finetune --mirror`` trains
    on, does the task too. With ``keep_hand`` the mirrored commands are those of
    :func:`policies.augment.mirrored_keeping_the_hand` (the objects mirrored, the right hand's
    grasp kept), which ``finetune --mirror-keep-hand`` trains on; None where it has no copy.
    """
    from robot_runtime.data.episode_file import load_episode  # noqa: PLC0415
    from robot_runtime.perception.preprocess import VisualSpec  # noqa: PLC0415

    ep = load_episode(episode_file, allow_partial=False)
    seed, task = ep.meta.get("seed"), str(ep.meta.get("task"))
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{episode_file}: no object placement seed in its metadata; cannot replay it")
    commands = np.asarray(ep["command"], float)
    if mirrored and keep_hand:
        from policies.augment import mirrored_copies  # noqa: PLC0415
        from robot_runtime.data.dataset import load_for_training  # noqa: PLC0415

        copy = mirrored_copies(load_for_training([episode_file], visual_spec=ep.meta["visual"]))[0]
        if copy is None:
            return None
        commands = np.concatenate([commands[:1], copy.actions])
    elif mirrored:
        commands = mirror_joints(commands, np.asarray(ep["q"], float)[0], D.ALL_JOINTS)
    tw = TwinEpisodeRunner(cfg, visual or VisualSpec.from_dict(ep.meta["visual"]))

    def mirror_the_scene(start, q):
        tw.sim.mirror_objects()
    on_reset = mirror_the_scene if mirrored else None
    try:
        def drive(t, q, depth, K):
            k = int(round(t / tw.period)) + 1
            return commands[min(k, len(commands) - 1)]
        return tw.run(task, seed, drive, len(commands) * tw.period, on_reset=on_reset,
                      note=f"{'mirrored ' if mirrored else ''}replay of {Path(episode_file).name}")
    finally:
        tw.close()
