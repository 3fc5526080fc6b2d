"""Behaviour cloning: the HOP training objective on recorded episodes.

An episode is a sequence of policy steps: joint positions ``q`` [N, 23] and the targets
sent ``actions`` [N, 23] (rad, drivers' order), and the step's visual input
[N, ...] made by :mod:`robot_runtime.perception.preprocess` (the same path the policy
node uses). Training windows are built with :func:`policies.history.window_indices`, so
the start-of-episode padding is the runtime's.

Recipe (HOP): L1 on scaled actions over the window, AdamW lr 1e-4, weight decay 0.01,
gradient-norm clip 0.25, Gaussian noise of std 0.1 on the scaled proprio inputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from policies.errors import PolicyError
from policies.history import window_indices
from policies.hop import HopPolicy
from policies.schema import PolicySchema


@dataclass
class Episode:
    """One episode's policy steps (see the module docstring)."""

    q: np.ndarray
    actions: np.ndarray
    visual: np.ndarray

    def __post_init__(self):
        n = len(self.q)
        if self.q.ndim != 2 or self.actions.shape != self.q.shape or len(self.visual) != n or n == 0:
            raise PolicyError(f"episode arrays do not fit: q {self.q.shape}, actions {self.actions.shape}, "
                              f"visual {self.visual.shape}")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 0.25
    proprio_noise: float = 0.1
    seed: int = 0


class WindowSampler:
    """Random training windows over episodes, in the schema's (policy) joint order and scaling."""

    def __init__(self, episodes: list[Episode], schema: PolicySchema, driver_names):
        idx = schema.index_in(driver_names)
        self.schema = schema
        self.T = schema.history
        self.q = [schema.scale(e.q[:, idx]) for e in episodes]
        self.a = [schema.scale(e.actions[:, idx]) for e in episodes]
        self.v = [np.asarray(e.visual, np.float32) for e in episodes]
        self.where = np.array([(i, t) for i, e in enumerate(episodes) for t in range(len(e.q))])

    def __len__(self) -> int:
        return len(self.where)

    def batch(self, rng: np.random.Generator, size: int, run: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``size`` windows, as runs of ``run`` consecutive windows of one episode (they share
        frames, so each distinct frame is encoded once per batch).

        Returns (proprio [B, T, 23], frames [U, ...] the distinct visual inputs,
        frame_index [B, T] into ``frames``, actions [B, T, 23]).
        """
        ps, acts, keys = [], [], []
        while len(ps) < size:
            ep, t_end = self.where[rng.integers(len(self.where))]
            for t in range(max(0, int(t_end) - run + 1), int(t_end) + 1):
                if len(ps) == size:
                    break
                w = window_indices(t, self.T)
                ps.append(self.q[ep][w])
                acts.append(self.a[ep][w])
                keys.append([(int(ep), int(i)) for i in w])
        uniq = sorted({k for row in keys for k in row})
        pos = {k: i for i, k in enumerate(uniq)}
        frames = np.stack([self.v[ep][i] for ep, i in uniq])
        index = np.array([[pos[k] for k in row] for row in keys])
        return (torch.from_numpy(np.stack(ps)), torch.from_numpy(frames), torch.from_numpy(index),
                torch.from_numpy(np.stack(acts)))


def bc_loss(model: HopPolicy, proprio, frames, index, actions) -> torch.Tensor:
    """Mean L1 between the predicted and the demonstrated scaled actions over every window step."""
    pred, _ = model.trunk(proprio, model.encode_visual(frames)[index])
    return (pred - actions).abs().mean()


def bc_step(model: HopPolicy, opt: torch.optim.Optimizer, sampler: WindowSampler, rng: np.random.Generator,
            cfg: TrainConfig, device: torch.device | str = "cpu") -> float:
    """One optimizer step on a fresh batch (proprio noise, L1, gradient clip); returns the loss.

    Raises:
        PolicyError: the loss is not finite (the step is not applied).
    """
    proprio, frames, index, actions = (x.to(device) for x in sampler.batch(rng, cfg.batch))
    if cfg.proprio_noise > 0:
        proprio = proprio + cfg.proprio_noise * torch.randn_like(proprio)
    loss = bc_loss(model, proprio, frames, index, actions)
    if not torch.isfinite(loss):
        raise PolicyError(f"training loss became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item()


@torch.no_grad()
def validation_loss(model: HopPolicy, sampler: WindowSampler, device: torch.device | str = "cpu",
                    batches: int = 8, batch: int = 64) -> float:
    """Mean L1 (no noise) on a fixed set of windows of ``sampler``'s episodes: the same windows at
    every call, so the numbers compare across steps."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(12345)
    total = 0.0
    for _ in range(batches):
        proprio, frames, index, actions = (x.to(device) for x in sampler.batch(rng, batch))
        total += bc_loss(model, proprio, frames, index, actions).item()
    model.train(was_training)
    return total / batches


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
    sampler = WindowSampler(episodes, schema, driver_names)
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
            losses.append(bc_step(model, opt, sampler, rng, cfg))
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
