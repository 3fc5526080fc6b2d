"""The closed-loop policy: one tick per policy period, and verified checkpoint hot-swap.

Knows nothing of ROS. The policy node calls :meth:`ClosedLoopPolicy.tick` from its 20 Hz
deadline loop with the newest depth frame and the joint states, and publishes what it
returns; a parameter change calls :meth:`ClosedLoopPolicy.prepare` (load, check against
the live robot, warm up, dry-run on the current history; on any thread) then
:meth:`ClosedLoopPolicy.install`, which hands the new policy to the loop thread to swap
in between two ticks.

Per tick:

1. Take the newest frame; older than ``max_frame_age_s``: no action this tick (counted).
2. Joint states missing or older than ``max_state_age_s``: no action (counted).
3. A frame not seen before is preprocessed and encoded once; its embedding is kept in
   the history (a frame used by two ticks is encoded once).
4. Append (joints, frame) to the 16-step history; run the trunk on the padded window.
5. Turn the output into targets in radians as the checkpoint's action representation says
   (:mod:`policies.action`: a chunk of H future targets, absolute or relative to the joints
   measured this tick; HOP's own layout is one absolute target, H = 1), in the drivers' joint
   order; a non-finite chunk is not used (counted).
6. The chunk joins the temporal ensemble; the published target is the ensemble's blend of
   every stored chunk's row for the next tick, stamped for it.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from policies.action import TemporalEnsembler
from policies.checkpoint import Checkpoint, load_checkpoint
from policies.errors import PolicyError
from policies.hand_view import network_visual
from policies.history import StepHistory
from policies.runners import PolicyRunner, make_runner
from robot_runtime import description as D
from robot_runtime.config import path_inside
from robot_runtime.perception.preprocess import PreprocessError, VisualPreprocessor

#: Why a tick published nothing.
SKIPS = ("idle", "no_frame", "stale_frame", "no_joint_state", "stale_joint_state", "bad_frame", "nonfinite_action")


@dataclass(frozen=True)
class LiveRobot:
    """The running robot a checkpoint must fit.

    Attributes:
        joint_names: the drivers' 23 joint names, in the order targets are published.
        limits: [(lower, upper)] (rad) per joint, same order.
        policy_hz: the configured policy rate.
        T_base_camera: 4x4 camera pose in the base frame (None: not calibrated).
    """

    joint_names: tuple[str, ...]
    limits: tuple[tuple[float, float], ...]
    policy_hz: float
    T_base_camera: np.ndarray | None = None


@dataclass(frozen=True)
class Frame:
    """A depth frame as the policy sees it: ``depth`` [H, W] (m), ``K`` [3, 3], acquisition ``t`` (s),
    and ``seq``, which is the same for the same frame across ticks."""

    depth: np.ndarray
    K: np.ndarray
    t: float
    seq: int


@dataclass(frozen=True)
class Step:
    """One history step: joints [23] (rad, driver order), its frame, and, for the loaded policy,
    the frame's visual input and embedding [D]."""

    q: np.ndarray
    frame: Frame
    visual: np.ndarray
    emb: np.ndarray


@dataclass
class TickResult:
    """What one tick did. ``q`` [23] (rad, driver order) is None when the tick published nothing;
    then ``skip`` says why. Timings in ms."""

    now: float
    stamp_for: float
    q: np.ndarray | None = None
    skip: str | None = None
    detail: str = ""
    frame_t: float | None = None
    timings: dict = field(default_factory=dict)


class LoadedPolicy:
    """A checkpoint checked against the live robot, with its runner and preprocessing."""

    def __init__(self, checkpoint: Checkpoint, runner: PolicyRunner, live: LiveRobot):
        self.checkpoint = checkpoint
        self.runner = runner
        self.schema = checkpoint.schema
        self.preprocess = VisualPreprocessor(self.schema.visual, live.T_base_camera)
        self.idx = self.schema.index_in(live.joint_names)      # policy slot -> driver index
        self.inv = np.argsort(self.idx)                         # driver index -> policy slot

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @classmethod
    def load(cls, path, live: LiveRobot, runner: str = "onnxruntime", warmup_steps: int = 10,
             export_in_subprocess: bool = False, pause=None) -> "LoadedPolicy":
        """Load ``path``, check it against ``live``, build the runner and warm it up
        (``export_in_subprocess``: see :func:`policies.onnx_export.export_onnx`; ``pause``: called
        between the steps, to spread the work out).

        Raises:
            CheckpointError / SchemaMismatchError / PolicyError: naming what is wrong.
        """
        pause = pause or (lambda: None)
        ckpt = load_checkpoint(path)
        ckpt.check_against_robot(live.joint_names, live.limits, live.policy_hz)
        pause()
        try:
            policy = cls(ckpt, make_runner(runner, ckpt, export_in_subprocess), live)
        except PreprocessError as exc:
            raise PolicyError(f"{ckpt.path}: {exc}") from exc
        for _ in range(warmup_steps):
            pause()
            policy.runner.warm_up(1)
        return policy

    def encode(self, frame: Frame, q=None) -> tuple[np.ndarray, np.ndarray]:
        """Frame (and the joints [23] at its time, driver order) -> (visual input, embedding [D]).
        Raises PreprocessError for a frame it cannot use."""
        visual = self.preprocess(frame.depth, frame.K, frame.t, q)
        return visual, self.embed(visual, q)

    def embed(self, visual: np.ndarray, q) -> np.ndarray:
        """A frame's visual input and the joints [23] (rad, driver order) measured with it -> its
        embedding [embedding_dim] (with a hand's view, :mod:`policies.hand_view`, the joints place the
        palm; without, they are not used)."""
        view = self.checkpoint.arch.hand_view
        if not view:
            return self.runner.encode(visual)
        if q is None:
            raise PreprocessError(f"{self.checkpoint.path}: its hand's view needs the joints measured with the frame")
        return self.runner.encode(network_visual(visual, q, view))

    def network_inputs(self, steps: list[Step]) -> tuple[np.ndarray, np.ndarray]:
        """Full window of steps -> (proprio [T, 23] normalised, in policy order; embeddings [T, D])."""
        return self.schema.proprio_in(np.stack([s.q[self.idx] for s in steps])), np.stack([s.emb for s in steps])

    @property
    def chunk(self) -> int:
        return self.schema.chunk

    def ensembler(self, period_s: float) -> TemporalEnsembler:
        """A temporal ensemble for this policy's chunks (H = 1: it passes the one target through)."""
        decay = 0.0 if self.schema.action is None else self.schema.action.ensemble_decay
        return TemporalEnsembler(period_s, self.chunk, decay)

    def targets(self, action: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """The network's output [23 x H] and the joints [23] measured at the tick (rad, driver order)
        -> the chunk of targets [H, 23] (rad, driver order), row k for k + 1 ticks later."""
        return self.schema.targets(action, np.asarray(q_now, float)[self.idx])[:, self.inv]

    def act(self, steps: list[Step]) -> np.ndarray:
        """Full window of steps -> the chunk [H, 23] (rad, driver order); may hold NaN if the network does."""
        return self.targets(self.runner.act(*self.network_inputs(steps)), steps[-1].q)

    def restep(self, steps: list[Step], known: dict[int, tuple] | None = None) -> list[Step]:
        """The same steps re-encoded for this policy (``known``: frame seq -> (visual, emb) already done)."""
        known = dict(known or {})
        out = []
        for s in steps:
            if s.frame.seq not in known:
                known[s.frame.seq] = self.encode(s.frame, s.q)
            visual, emb = known[s.frame.seq]
            out.append(replace(s, visual=visual, emb=emb))
        return out


@dataclass
class _Candidate:
    policy: LoadedPolicy
    encoded: dict[int, tuple]          # frame seq -> (visual, emb) from the dry run
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class ClosedLoopPolicy:
    """Closed-loop stepping of a :class:`LoadedPolicy`, with episode control and hot-swap.

    Args:
        policy: the policy to start with.
        period_s: the policy period (s); targets are stamped ``period_s`` ahead.
        max_frame_age_s: an older newest frame means no action that tick.
        max_state_age_s: older joint states mean no action that tick.
    """

    def __init__(self, policy: LoadedPolicy, period_s: float, max_frame_age_s: float = 0.1,
                 max_state_age_s: float = 0.1):
        self.policy = policy
        self.previous: LoadedPolicy | None = None
        self.period_s = period_s
        self.max_frame_age_s = max_frame_age_s
        self.max_state_age_s = max_state_age_s
        self.history: StepHistory[Step] = StepHistory(policy.schema.history)
        self.ensemble = policy.ensembler(period_s)
        self.running = False
        self.counts: Counter = Counter()
        self.episode = 0
        self._lock = threading.Lock()
        self._pending: _Candidate | None = None
        self._last_frame: tuple[int, np.ndarray, np.ndarray] | None = None   # seq, visual, emb
        self.ticking = False   # True while a loop calls tick(); then swaps wait for it

    # ------------------------------------------------------------------ episodes
    def start(self) -> str:
        with self._lock:
            self.history.clear()
            self.ensemble.clear()
            self._last_frame = None
            self.running = True
            self.episode += 1
            return f"episode {self.episode} started with {self.policy.name}"

    def stop(self) -> str:
        with self._lock:
            self.running = False
            return f"episode {self.episode} stopped after {self.history.count} steps"

    def reset(self) -> str:
        """Clear the history (the next tick starts a padded window), keep running or not."""
        with self._lock:
            self.history.clear()
            self.ensemble.clear()
            self._last_frame = None
            return f"history cleared; episode {self.episode} {'running' if self.running else 'stopped'}"

    # ------------------------------------------------------------------ tick
    def tick(self, now: float, frame: Frame | None, joints: tuple[float, np.ndarray] | None,
             stamp_for: float | None = None) -> TickResult:
        """One policy step at time ``now`` (s). ``joints`` = (acquisition time, q [23] driver order)."""
        t0 = time.perf_counter()
        with self._lock:
            self._swap_if_pending()
            res = TickResult(now, now + self.period_s if stamp_for is None else stamp_for)
            if not self.running:
                return self._skip(res, "idle")
            if frame is None:
                return self._skip(res, "no_frame", "no depth frame received yet")
            res.frame_t = frame.t
            age = now - frame.t
            res.timings["frame_age"] = age * 1e3
            if age > self.max_frame_age_s:
                return self._skip(res, "stale_frame", f"newest frame is {age * 1e3:.0f} ms old "
                                                      f"(limit {self.max_frame_age_s * 1e3:.0f} ms)")
            if joints is None:
                return self._skip(res, "no_joint_state", "no joint states received yet")
            jt, q = joints
            if now - jt > self.max_state_age_s:
                return self._skip(res, "stale_joint_state", f"joint states are {(now - jt) * 1e3:.0f} ms old")
            pol = self.policy
            t1 = time.perf_counter()
            if self._last_frame is not None and self._last_frame[0] == frame.seq:
                _, visual, emb = self._last_frame
                t2 = t3 = t1
            else:
                try:
                    visual = pol.preprocess(frame.depth, frame.K, frame.t, q)
                except PreprocessError as exc:
                    return self._skip(res, "bad_frame", str(exc))
                t2 = time.perf_counter()
                emb = pol.embed(visual, q)
                t3 = time.perf_counter()
                self._last_frame = (frame.seq, visual, emb)
            self.history.append(Step(np.asarray(q, float), frame, visual, emb))
            action = pol.runner.act(*pol.network_inputs(self.history.window()))
            t4 = time.perf_counter()
            chunk = pol.targets(action, q)
            ok = bool(np.all(np.isfinite(chunk)))
            if ok:
                self.ensemble.add(res.stamp_for, chunk)
                targets = self.ensemble.target(res.stamp_for)
            t5 = time.perf_counter()
            res.timings.update(preprocess=(t2 - t1) * 1e3, encode=(t3 - t2) * 1e3, trunk=(t4 - t3) * 1e3,
                               post=(t5 - t4) * 1e3, total=(t5 - t0) * 1e3)
            if not ok:
                return self._skip(res, "nonfinite_action", f"the network returned non-finite targets for "
                                                           f"{int(np.sum(~np.isfinite(chunk)))} of {chunk.size} "
                                                           f"chunk entries")
            res.q = targets
            self.counts["published"] += 1
            return res

    def _skip(self, res: TickResult, reason: str, detail: str = "") -> TickResult:
        res.skip, res.detail = reason, detail
        self.counts[reason] += 1
        return res

    # ------------------------------------------------------------------ hot-swap
    def prepare(self, path, live: LiveRobot, runner: str = "onnxruntime", warmup_steps: int = 10,
                export_in_subprocess: bool = False, pause=None) -> _Candidate:
        """Load ``path``, check it against ``live``, warm it up and dry-run it on the current history.

        Runs on the caller's thread; the loop keeps ticking with the current policy.

        Raises:
            CheckpointError / SchemaMismatchError / PolicyError: what is wrong with the checkpoint
                (a dry run that fails or gives non-finite targets is a PolicyError).
        """
        policy = LoadedPolicy.load(path, live, runner, warmup_steps, export_in_subprocess, pause)
        return self._dry_run(policy)

    def _dry_run(self, policy: LoadedPolicy) -> _Candidate:
        with self._lock:
            steps = self.history.steps()
            window = self.history.window() if steps else []
        try:
            restepped = policy.restep(window)
            if restepped:
                targets = policy.act(restepped)
                if targets.shape != (policy.chunk, len(policy.idx)) or not np.all(np.isfinite(targets)):
                    raise PolicyError(f"{policy.checkpoint.path}: dry run on the current history gave non-finite "
                                      f"or misshapen targets {np.round(targets, 3).tolist()}")
        except PreprocessError as exc:
            raise PolicyError(f"{policy.checkpoint.path}: dry run could not preprocess the history: {exc}") from exc
        return _Candidate(policy, {s.frame.seq: (s.visual, s.emb) for s in restepped})

    def install(self, candidate: _Candidate, timeout_s: float = 2.0) -> str:
        """Swap ``candidate`` in between two ticks (at once when no loop is ticking).

        Raises:
            PolicyError: the loop did not take it within ``timeout_s``, or re-encoding the
                newest frames failed (the old policy stays).
        """
        self._catch_up(candidate)
        with self._lock:
            self._pending = candidate
            if not self.ticking:
                self._swap_if_pending()
        if not candidate.done.wait(timeout_s):
            with self._lock:
                if self._pending is candidate:
                    self._pending = None
            raise PolicyError(f"the policy loop did not take {candidate.policy.name} within {timeout_s:g} s")
        if candidate.error is not None:
            raise PolicyError(f"swap to {candidate.policy.name} failed, {self.policy.name} kept: "
                              f"{candidate.error}")
        return f"now running {self.policy.name} (previous {self.previous.name if self.previous else 'none'})"

    def _catch_up(self, candidate: _Candidate, rounds: int = 3) -> None:
        """Encode, on the caller's thread, the frames that reached the history since the dry run,
        so that the swap tick itself re-encodes at most the newest one (a loaded machine can
        deliver several frames while a checkpoint loads; encoding them all in one tick overran it)."""
        for _ in range(rounds):
            with self._lock:
                todo = [(s.frame, s.q) for s in self.history.steps() if s.frame.seq not in candidate.encoded]
            if len(todo) <= 1:
                return
            try:
                for frame, q in todo:
                    candidate.encoded[frame.seq] = candidate.policy.encode(frame, q)
            except PreprocessError as exc:
                raise PolicyError(f"{candidate.policy.checkpoint.path}: could not preprocess a new frame: "
                                  f"{exc}") from exc

    def rollback(self) -> str:
        """Swap back to the previous checkpoint (dry-run on the current history first)."""
        if self.previous is None:
            raise PolicyError("no previous checkpoint to roll back to")
        return self.install(self._dry_run(self.previous))

    def _swap_if_pending(self) -> None:
        """With the lock held: install a pending candidate, re-encoding frames that came after its dry run."""
        cand, self._pending = self._pending, None
        if cand is None:
            return
        try:
            steps = cand.policy.restep(self.history.steps(), cand.encoded)
        except (PreprocessError, PolicyError) as exc:
            cand.error = exc
        else:
            self.history.replace(steps)
            self._last_frame = (steps[-1].frame.seq, steps[-1].visual, steps[-1].emb) if steps else None
            if self.history.length != cand.policy.schema.history:
                old = self.history.steps()[-cand.policy.schema.history:]
                self.history = StepHistory(cand.policy.schema.history)
                for s in old:
                    self.history.append(s)
            self.previous, self.policy = self.policy, cand.policy
            self.ensemble = cand.policy.ensembler(self.period_s)   # the old policy's chunks are not blended in
            self.counts["swaps"] += 1
        cand.done.set()

    def status(self) -> dict:
        """Counters and names for status topics and diagnostics."""
        with self._lock:
            return {"running": self.running, "episode": self.episode, "steps": self.history.count,
                    "checkpoint": self.policy.name, "checkpoint_path": str(self.policy.checkpoint.path),
                    "previous": self.previous.name if self.previous else "",
                    "counts": dict(self.counts)}




class CheckpointSwapper:
    """Hot-swap and rollback for a running :class:`ClosedLoopPolicy`, off the loop's thread.

    A checkpoint loads on a worker thread in short steps with pauses between them (``pause``),
    so the camera and the twin keep their CPU while it loads (not a lower thread priority: a
    starved thread holding the GIL would delay the policy loop). :attr:`last` says what the
    last swap or rollback did.
    """

    def __init__(self, policy: ClosedLoopPolicy, live: LiveRobot, runner: str, warmup_steps: int,
                 pause=lambda: time.sleep(0.01), roots=None):
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        self.policy, self.live, self.runner, self.warmup_steps, self.pause = policy, live, runner, warmup_steps, pause
        self.roots = [Path(r) for r in roots] if roots else None   # where a swap may load from (None: anywhere)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-loader")
        self.last = f"loaded {policy.policy.name}"

    def swap(self, path) -> str:
        """Load, check, warm up and dry-run ``path``, then swap it in between ticks; returns what
        happened. Raises PolicyError/CheckpointError (the running policy stays): also when ``path``
        lies outside the swapper's ``roots``."""
        t0 = time.monotonic()
        try:
            if self.roots is not None:
                try:
                    path = path_inside(path, self.roots, "checkpoint")
                except ValueError as exc:
                    raise PolicyError(str(exc)) from None
            cand = self._loader.submit(self.policy.prepare, path, self.live, self.runner, self.warmup_steps,
                                       export_in_subprocess=True, pause=self.pause).result()
            msg = self.policy.install(cand)
        except Exception as exc:
            self.last = f"refused {path}: {exc}"
            raise
        self.last = f"{msg} in {time.monotonic() - t0:.2f} s"
        return self.last

    def rollback(self) -> str:
        """Back to the previous policy; raises PolicyError when there is none."""
        msg = self._loader.submit(self.policy.rollback).result()
        self.last = f"rolled back: {msg}"
        return msg

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


class LatestInputs:
    """The policy loop's latest-value slots: the newest depth frame (numbered as it arrives, with
    the intrinsics it is projected with) and each part's newest joint states."""

    #: Joints per part (arm then hand: the policy's 23).
    SIZES = {"arm": len(D.ARM_JOINTS), "hand": len(D.HAND_JOINTS)}

    def __init__(self):
        self.frame: Frame | None = None
        self._seq = 0
        self._joints: dict[str, tuple[float, np.ndarray]] = {}
        #: Joint states refused per part (a non-finite value, another count or a bad stamp); the
        #: last good ones stay, and age into a stale_joint_state skip if no good one follows.
        self.refused_joints = {p: 0 for p in self.SIZES}

    def on_depth(self, stamp: float, depth: np.ndarray, K: np.ndarray) -> None:
        """A depth frame [H, W] (m) acquired at ``stamp`` (s), with its camera's intrinsics K [3, 3]."""
        self._seq += 1
        self.frame = Frame(depth, np.asarray(K, float), stamp, self._seq)

    def on_joints(self, part: str, stamp: float, q) -> bool:
        """``part``'s ('arm' or 'hand') joints (rad, driver order) acquired at ``stamp`` (s). Refused
        and counted (:attr:`refused_joints`) unless all finite and as many as the part has (a NaN
        from any peer on the topic made every action of the network non-finite). Returns whether taken."""
        try:
            q = np.asarray(q, float)
            ok = q.shape == (self.SIZES[part],) and bool(np.all(np.isfinite(q))) and math.isfinite(stamp)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            self.refused_joints[part] += 1
            return False
        self._joints[part] = (stamp, q)
        return True

    def joints(self) -> tuple[float, np.ndarray] | None:
        """(the older of the two stamps, q [23] arm then hand), or None until both have arrived."""
        if len(self._joints) < 2:
            return None
        (ta, qa), (th, qh) = self._joints["arm"], self._joints["hand"]
        return min(ta, th), np.concatenate([qa, qh])


class TickWindow:
    """Tick timings between two reports: :meth:`add` each tick's result, :meth:`summary` gives
    the window's median and worst compute time and median frame age (ms), and starts anew."""

    def __init__(self):
        self._total: list[float] = []
        self._age: list[float] = []

    def add(self, res: TickResult) -> None:
        if "total" in res.timings:
            self._total.append(res.timings["total"])
        if "frame_age" in res.timings:
            self._age.append(res.timings["frame_age"])

    def summary(self) -> dict:
        w, age = np.asarray(self._total), np.asarray(self._age)
        self._total, self._age = [], []
        return {"tick_ms_p50": float(np.percentile(w, 50)) if len(w) else 0.0,
                "tick_ms_max": float(w.max()) if len(w) else 0.0,
                "frame_age_ms_p50": float(np.percentile(age, 50)) if len(age) else 0.0}


class TickLog:
    """Per-tick figures kept for the benchmark and written as ``.npz`` (times in s, durations in ms)."""

    FIELDS = ("now", "frame_t", "published_t", "frame_age", "preprocess", "encode", "trunk", "post", "total")

    def __init__(self):
        self.rows: list[tuple] = []
        self.skips: list[str] = []

    def record(self, res: TickResult, published_t: float | None) -> None:
        t = res.timings
        nan = float("nan")
        self.rows.append((res.now, nan if res.frame_t is None else res.frame_t,
                          nan if published_t is None else published_t,
                          *(t.get(k, nan) for k in self.FIELDS[3:])))
        self.skips.append(res.skip or "")

    def save(self, path, **extra) -> None:
        arr = np.array(self.rows, float).reshape(-1, len(self.FIELDS))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: arr[:, i] for i, k in enumerate(self.FIELDS)}, skip=np.array(self.skips), **extra)
