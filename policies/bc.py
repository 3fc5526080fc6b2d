"""Behaviour cloning: the HOP training objective on recorded episodes.

An episode is a sequence of policy steps: joint positions ``q`` [N, 23] and the targets
sent ``actions`` [N, 23] (rad, drivers' order), and the step's visual input
[N, ...] made by :mod:`robot_runtime.perception.preprocess` (the same path the policy
node uses). Training windows are built with :func:`policies.history.window_indices`, so
the start-of-episode padding is the runtime's.

Recipe (HOP): L1 on scaled actions over the window, AdamW lr 1e-4, weight decay 0.01,
gradient-norm clip 0.25, Gaussian noise of std 0.1 on the scaled proprio inputs. A
checkpoint with an action representation (:mod:`policies.action`) trains on normalised
chunks of targets instead, with noise in radians, a warm-up and cosine schedule and an
average of the weights (:class:`TrainConfig`).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from policies.errors import PolicyError
from policies.hand_view import network_visual
from policies.history import window_indices
from policies.hop import HopPolicy
from policies.schema import PolicySchema
from robot_runtime.data.dataset import TrainingEpisode


#: The training episode type comes from the data layer, which hands it out.
Episode = TrainingEpisode


def point_clouds(ep: Episode, what: str) -> np.ndarray:
    """``ep``'s visual input as point clouds [N, P, 3] (base frame, m).

    Raises:
        PolicyError: it is not point clouds (``what`` needs them).
    """
    vis = np.asarray(ep.visual)
    if vis.ndim != 3 or vis.shape[-1] != 3:
        raise PolicyError(f"{what} needs point clouds [N, P, 3] (base frame), got visual input {vis.shape}")
    return vis


#: The arm joints whose angle changes sign when the cell is mirrored across the base's x-z plane
#: (y -> -y): those about an axis lying in that plane at the zero posture (the xArm7's 1, 3, 5, 7;
#: 2, 4 and 6 keep their angle).
MIRRORED_JOINTS = ("joint1", "joint3", "joint5", "joint7")


def mirror_joints(q: np.ndarray, start: np.ndarray, driver_names, tolerance: float = 0.05) -> np.ndarray:
    """Joints or targets ``q`` [..., 23] (rad, ``driver_names`` order) mirrored across the base's
    x-z plane: the joints of :data:`MIRRORED_JOINTS` at ``c - q``, the rest as they are. ``c`` is
    twice the multiple of pi nearest the posture ``start`` [23] (a wrist at pi stays at pi), so a
    motion from ``start`` mirrors into one from ``start``.

    Raises:
        PolicyError: ``start`` is not mirror-symmetric (a mirrored demo would start where no
            rollout does).
    """
    names = list(driver_names)
    cols = [names.index(n) for n in MIRRORED_JOINTS]
    s = np.asarray(start, float)[cols]
    centre = 2.0 * np.pi * np.round(s / np.pi)
    off = np.abs(s - centre / 2.0)
    if off.max() > tolerance:
        j = int(np.argmax(off))
        raise PolicyError(f"mirroring needs demos that start mirror-symmetric: {MIRRORED_JOINTS[j]} starts at "
                          f"{s[j]:.3f} rad, {off[j]:.3f} rad from a multiple of pi")
    out = np.array(q, float, copy=True)
    out[..., cols] = centre - out[..., cols]
    return out


def mirror_episode(ep: Episode, driver_names, tolerance: float = 0.05) -> Episode:
    """``ep`` as it would have been recorded in the cell mirrored across the base's x-z plane
    (every object at y -> -y): joints and targets by :func:`mirror_joints` from the episode's first
    posture (so relative targets change sign on the mirrored joints), the point clouds (base frame)
    at y -> -y, the hand as it was.

    The xArm7's forward kinematics are mirror-symmetric so (the palm's pose mirrors exactly). What
    the hand does with an object need not be: check a task with a mirrored replay
    (:func:`policies.evaluate.replay_commands`, ``mirrored=True``). On the twin, mirrored demos
    replayed on mirrored placements succeed for grasp & drop and grasp & lift (6 of 6 each, top
    grasps) and not for grasp & pour (2 of 6: the right hand's side grasp, mirrored, holds the
    bottle thumb down).

    Raises:
        PolicyError: the visual input is not a point cloud, or the episode does not start in a
            mirror-symmetric posture.
    """
    vis = point_clouds(ep, "mirroring")
    q = mirror_joints(ep.q, ep.q[0], driver_names, tolerance)
    a = mirror_joints(ep.actions, ep.q[0], driver_names, tolerance)
    v = np.array(vis, np.float32, copy=True)
    v[..., 1] *= -1.0
    return Episode(q, a, v)


@dataclass
class TrainConfig:
    """The training recipe.

    HOP's own (the defaults of ``lr``, ``weight_decay``, ``grad_clip``, ``proprio_noise``) applies to
    a checkpoint without an action representation. With one (:mod:`policies.action`) the noise is
    given in radians per joint group by the representation, and the rest of the recipe applies
    alike: ``warmup`` steps of linear warm-up then a cosine decay to ``lr_min`` (``cosine``), an
    exponential moving average of the weights (``ema``, 0: none) that is what gets evaluated and
    saved, ``run`` consecutive windows per draw (1: every window in a batch independent), the
    ``loss`` ('l1' as HOP, or 'mse') and where it is taken (``loss_on``: 'all' window steps as
    HOP, or the 'last', the one a deployed policy acts on), and the ``precision`` of the training
    forward pass (:func:`training_precision`: 'fp32', 'bf16', or 'auto' for bf16 where the
    device multiplies bf16 in hardware).
    """

    steps: int = 2000
    batch: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 0.25
    proprio_noise: float = 0.1
    seed: int = 0
    warmup: int = 0
    cosine: bool = False
    lr_min: float = 1e-5
    ema: float = 0.0
    run: int = 8
    loss: str = "l1"
    loss_on: str = "all"
    precision: str = "fp32"

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based). The warm-up is at most a tenth of
        the job, so a short job still reaches the peak."""
        warmup = min(self.warmup, max(1, self.steps // 10)) if self.warmup else 0
        if warmup and step < warmup:
            return self.lr * (step + 1) / warmup
        if not self.cosine:
            return self.lr
        span = max(1, self.steps - warmup)
        x = min(1.0, (step - warmup) / span)
        return float(self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + np.cos(np.pi * x)))


class WindowSampler:
    """Random training windows over episodes, in the schema's (policy) joint order, normalised as
    the schema says (:meth:`PolicySchema.proprio_in`; targets as chunks, :mod:`policies.action`).

    ``embed``: a function frames -> embeddings [N, D]; given, the visual inputs are replaced by
    their embeddings once (a frozen visual encoder), and batches carry embeddings.
    ``hand_view``: the architecture's (:mod:`policies.hand_view`); its rows are appended to each
    frame's points from the joints of the frame's step.
    """

    def __init__(self, episodes: list[Episode], schema: PolicySchema, driver_names, embed=None, hand_view=()):
        idx = schema.index_in(driver_names)
        self.schema = schema
        self.T = schema.history
        spec = schema.action
        self.q = [schema.proprio_in(e.q[:, idx]) for e in episodes]
        self.a = []
        for e in episodes:
            q, a = e.q[:, idx], e.actions[:, idx]
            if spec is None:
                self.a.append(schema.scale(a))
            else:
                rows = spec.rows(q, a, np.arange(len(q)))
                self.a.append(spec.action_out(rows).reshape(len(q), -1))
        from robot_runtime.data.episode_store import LazyVisual  # noqa: PLC0415

        #: per episode its visual inputs [N, ...]: an array, or a LazyVisual read on use (a set
        #: larger than memory; :meth:`prefetch` reads ahead)
        self.v = [e.visual if isinstance(e.visual, LazyVisual) else np.asarray(e.visual, np.float32)
                  for e in episodes]
        self.lazy = any(isinstance(v, LazyVisual) for v in self.v)
        if self.lazy and (hand_view or embed is not None):
            what = "the hand's view" if hand_view else "a frozen encoder's embeddings"
            raise PolicyError(f"{what}: computed up front, so the episodes must be in memory (no visual cache)")
        if hand_view:
            self.v = [network_visual(v, e.q, hand_view) for v, e in zip(self.v, episodes)]
        self.embedded = embed is not None
        if embed is not None:
            self.v = [np.asarray(embed(v), np.float32) for v in self.v]
        #: [J] std of the proprio noise in the network's input units (None: ``cfg.proprio_noise`` applies)
        self.noise = None if spec is None else (spec.noise_std() / spec.proprio_std).astype(np.float32)
        self.where = np.array([(i, t) for i, e in enumerate(episodes) for t in e.window_ends])

    def __len__(self) -> int:
        return len(self.where)

    def batch(self, rng: np.random.Generator, size: int, run: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``size`` windows (:meth:`draw`), gathered (:meth:`gather`)."""
        return self.gather(self.draw(rng, size, run))

    def prefetch(self, windows: list[tuple[int, int]]) -> None:
        """Start reading the visual inputs these windows will need (lazy episodes only)."""
        if self.lazy:
            lazy = [self.v[ep] for ep in dict.fromkeys(ep for ep, _ in windows)
                    if not isinstance(self.v[ep], np.ndarray)]
            if lazy:
                lazy[0].cache.prefetch([v.path for v in lazy])

    def draw(self, rng: np.random.Generator, size: int, run: int = 8) -> list[tuple[int, int]]:
        """``size`` windows as (episode, last step), as runs of ``run`` consecutive windows of one
        episode (1: independent windows; longer runs share frames, so each distinct frame is
        encoded once per batch). The same generator state draws the same windows on every rank."""
        out: list[tuple[int, int]] = []
        while len(out) < size:
            ep, t_end = self.where[rng.integers(len(self.where))]
            for t in range(max(0, int(t_end) - run + 1), int(t_end) + 1):
                if len(out) == size:
                    break
                out.append((int(ep), t))
        return out

    def gather(self, windows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The arrays of these windows: (proprio [B, T, 23], frames [U, ...] the distinct visual
        inputs (or embeddings), frame_index [B, T] into ``frames``, targets [B, T, 23 x chunk])."""
        if not windows:
            frame, q, a = np.asarray(self.v[0][0]), self.q[0], self.a[0]
            return (torch.zeros((0, self.T, q.shape[1])), torch.zeros((0, *frame.shape)),
                    torch.zeros((0, self.T), dtype=torch.long), torch.zeros((0, self.T, a.shape[1])))
        ps, acts, keys = [], [], []
        for ep, t in windows:
            w = window_indices(t, self.T)
            ps.append(self.q[ep][w])
            acts.append(self.a[ep][w])
            keys.append([(ep, int(i)) for i in w])
        uniq = sorted({k for row in keys for k in row})
        pos = {k: i for i, k in enumerate(uniq)}
        held = {ep: np.asarray(self.v[ep]) for ep in {ep for ep, _ in uniq}}   # a lazy episode read once
        frames = np.stack([held[ep][i] for ep, i in uniq])
        index = np.array([[pos[k] for k in row] for row in keys])
        return (torch.from_numpy(np.stack(ps)), torch.from_numpy(frames), torch.from_numpy(index),
                torch.from_numpy(np.stack(acts)))


PRECISIONS = ("fp32", "bf16", "auto")


def training_precision(precision: str, device: torch.device | str) -> str:
    """The precision a training forward pass runs in on ``device``: 'fp32' or 'bf16'.

    'auto' is bf16 where the device multiplies bf16 matrices in hardware (a CPU with AMX
    bf16 tiles, a CUDA GPU that supports bf16), else fp32. In bf16 the matrix products of the
    forward pass (and their gradients) are bf16 with fp32 accumulation; the weights, the
    optimizer, the loss and every evaluation stay fp32 (``torch.autocast``). On a 2-core Xeon
    with AMX one step of the trunk at batch 32 took 39 ms against 70 ms in fp32.

    Raises:
        PolicyError: ``precision`` is none of :data:`PRECISIONS`, or 'bf16' is asked of a device
            without bf16 support.
    """
    if precision not in PRECISIONS:
        raise PolicyError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "auto":   # the hardware is asked only here: a resolved precision costs no lookup per step
        if kind == "cuda":
            hardware = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        elif kind == "cpu":
            caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
            hardware = bool(caps.get("amx_bf16"))
        else:
            hardware = False
        return "bf16" if hardware else "fp32"
    if precision == "bf16" and kind not in ("cpu", "cuda"):
        raise PolicyError(f"precision 'bf16': no bf16 training on a {kind} device")
    return precision


def autocast(precision: str, device: torch.device | str):
    """The context a training forward pass runs in for a resolved ``precision`` ('fp32' or 'bf16')."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def bc_loss(model: HopPolicy, proprio, frames, index, actions, embedded: bool = False, loss: str = "l1",
            loss_on: str = "all") -> torch.Tensor:
    """Mean L1 (or squared error, ``loss='mse'``) between the predicted and the demonstrated
    (normalised) targets, over every window step (``loss_on='all'``) or the last one (``'last'``),
    and every chunk row. ``embedded``: ``frames`` are already embeddings.

    Measured on one twin demo (a small network, 1000 steps): the next arm target's open-loop
    error was 0.0052 rad with L1 over every step, 0.0018 with L1 on the last step and 0.0011 with
    the squared error on the last step, against a demo step of 0.0107 rad: the early steps of a
    window, with little history, took the fit away from the step the policy acts on.
    """
    if loss not in ("l1", "mse") or loss_on not in ("all", "last"):
        raise PolicyError(f"loss {loss!r} on {loss_on!r}: expected 'l1' or 'mse' on 'all' or 'last'")
    emb = frames if embedded else model.encode_visual(frames)
    if loss_on == "last":   # the last step's prediction alone: the final block computes one token
        pred, actions = model.act(proprio, emb[index]), actions[:, -1]
    else:
        pred, _ = model.trunk(proprio, emb[index])
    d = pred.float() - actions
    return d.abs().mean() if loss == "l1" else d.pow(2).mean()


def bc_step(model: HopPolicy, opt: torch.optim.Optimizer, sampler: WindowSampler, rng: np.random.Generator,
            cfg: TrainConfig, device: torch.device | str = "cpu", step: int | None = None, world=None,
            ddp=None) -> float:
    """One optimizer step on a fresh batch (proprio noise, L1, gradient clip); returns the loss.
    ``step`` (0-based) sets the learning rate by ``cfg``'s schedule.

    ``world`` and ``ddp`` (:mod:`policies.distributed`): with several processes every rank draws
    the same global batch and noise, computes the windows of the episodes it owns through ``ddp``
    (a DDP-wrapped :class:`~policies.distributed.BatchLoss`) and gets the whole batch's gradient
    and loss, as one process would.

    Raises:
        PolicyError: the loss is not finite (the step is not applied).
    """
    if step is not None:
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
    windows = sampler.draw(rng, cfg.batch, cfg.run)
    q_dim = sampler.q[0].shape[1]
    noise = rng.standard_normal((len(windows), sampler.T, q_dim)).astype(np.float32)   # the global batch's
    distributed = world is not None and world.distributed
    mine = [i for i, (ep, _) in enumerate(windows) if world.owns(ep)] if distributed else list(range(len(windows)))
    proprio, frames, index, actions = (x.to(device) for x in sampler.gather([windows[i] for i in mine]))
    scale = sampler.noise if sampler.noise is not None else np.float32(cfg.proprio_noise)
    proprio = proprio + torch.from_numpy(noise[mine] * scale).to(device)

    with autocast(training_precision(cfg.precision, device), device):
        if distributed:
            share = len(mine) / len(windows)
            loss = ddp(proprio, frames, index, actions, world.size * share)
        else:
            loss = bc_loss(model, proprio, frames, index, actions, sampler.embedded, cfg.loss, cfg.loss_on)
    value = world.sum(loss.item() / world.size, device) if distributed else loss.item()
    if not np.isfinite(value):
        raise PolicyError(f"training loss became {value}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return value


class WeightAverage:
    """An exponential moving average of a model's weights (``decay`` per step), kept on its device."""

    def __init__(self, model: HopPolicy, decay: float):
        import copy  # noqa: PLC0415

        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: HopPolicy) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))   # short memory while young
        pairs = [(pe, p.detach()) for pe, p in zip(self.model.parameters(), model.parameters())]
        torch._foreach_lerp_([pe for pe, _ in pairs], [p for _, p in pairs], 1.0 - d)   # one call, every tensor
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)


@torch.no_grad()
def validation_loss(model: HopPolicy, sampler: WindowSampler, device: torch.device | str = "cpu",
                    batches: int = 8, batch: int = 64, loss: str = "l1", loss_on: str = "all") -> float:
    """The training loss (no noise) on a fixed set of windows of ``sampler``'s episodes: the same
    windows at every call, so the numbers compare across steps."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(12345)
    total = 0.0
    for _ in range(batches):
        proprio, frames, index, actions = (x.to(device) for x in sampler.batch(rng, batch))
        total += bc_loss(model, proprio, frames, index, actions, sampler.embedded, loss, loss_on).item()
    model.train(was_training)
    return total / batches


@torch.no_grad()
def open_loop_error(model: HopPolicy, schema: PolicySchema, episodes: list[Episode], driver_names,
                    every: int = 2, device: torch.device | str = "cpu") -> dict:
    """How far the network's targets are from the demonstrated ones, in radians, on ``episodes``:
    the window ending at every ``every``-th step is run (eval mode, no noise) and its chunk
    compared with the targets the demo sent over the same ticks.

    Returns {"per_joint": [23] mean |error| (rad, driver order) of the first row (the next target),
    "per_row": [H] mean |error| over the arm joints per chunk row, "arm": mean of the first row's arm
    error, "hand": the same for the hand, "demo_step": [23] mean |next target - measured| (rad,
    driver order), "windows": count}.
    """
    idx = schema.index_in(driver_names)
    inv = np.argsort(idx)
    H = schema.chunk
    was_training = model.training
    model.eval()
    errs, steps = [], []
    for e in episodes:
        q, a = e.q[:, idx], e.actions[:, idx]
        ts = np.arange(0, len(q), every)
        wins = np.stack([window_indices(int(t), schema.history) for t in ts])
        vis = network_visual(np.asarray(e.visual, np.float32), e.q, model.arch.hand_view)
        emb = model.encode_visual(torch.from_numpy(vis).to(device))
        prop = torch.from_numpy(schema.proprio_in(q)[wins]).to(device)
        out = model.act(prop, emb[torch.from_numpy(wins).to(device)]).cpu().numpy()
        for k, t in enumerate(ts):
            pred = schema.targets(out[k], q[t])                                  # [H, J] rad
            true = a[np.minimum(t + np.arange(H), len(a) - 1)]
            errs.append(np.abs(pred - true))
            steps.append(np.abs(a[t] - q[t]))
    model.train(was_training)
    err, step = np.stack(errs), np.mean(steps, axis=0)
    first = err[:, 0].mean(0)
    return {"per_joint": np.round(first[inv], 5).tolist(), "per_row": np.round(err[:, :, :7].mean((0, 2)), 5).tolist(),
            "arm": float(first[:7].mean()), "hand": float(first[7:].mean()), "chunk": float(err.mean()),
            "demo_step": np.round(step[inv], 5).tolist(), "windows": int(len(err))}


def train_bc(model: HopPolicy, schema: PolicySchema, episodes: list[Episode], driver_names,
             cfg: TrainConfig | None = None, progress: bool = True, log=None) -> list[float]:
    """Train ``model`` in place; returns the loss of every step.

    Raises:
        PolicyError: no episodes, or a loss that becomes non-finite (training stops; the
            model keeps its last finite weights).
    """
    cfg = cfg or TrainConfig()
    if not episodes:
        raise PolicyError("no episodes to train on")
    sampler = WindowSampler(episodes, schema, driver_names, hand_view=model.arch.hand_view)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=cfg.steps, desc="train", unit="step")
    t0 = time.monotonic()
    try:
        for step in range(cfg.steps):
            losses.append(bc_step(model, opt, sampler, rng, cfg, step=step))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
                log(step, losses[-1], time.monotonic() - t0)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return losses
