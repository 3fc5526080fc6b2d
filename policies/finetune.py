"""Finetuning: behaviour cloning on recorded episodes, with checkpoints, resume and provenance.

:class:`FinetuneJob` trains the HOP network on episodes saved by the recorder (or by the
in-process twin runner). From scratch, or from a base that carries one, it trains the
chunked action representation (:mod:`policies.action`) with the few-shot recipe of
:class:`FinetuneConfig`; from a base in the public HOP layout it keeps HOP's representation
and recipe (L1 on scaled actions over the 16-step window, proprio noise 0.1, AdamW lr 1e-4,
weight decay 0.01, gradient clip 0.25). A job from scratch takes its architecture from the
preprocessing the episodes were recorded with, and its normalisation from the training
episodes. The weights kept are those with the lowest open-loop error on the held-out
episodes (:func:`policies.bc.open_loop_error`).

Episodes are split into training and validation *by episode*. Every ``save_every`` steps
and at the end the job writes, under ``out``:

- ``step_NNNNNN/``: a checkpoint in the project's format (the last two are kept);
- ``train_state.pt``: the optimizer, the step, the random generators and the loss
  history, written atomically, so ``resume`` continues exactly where it stopped;
- at the end, ``out`` itself becomes the final checkpoint (with its ONNX files, so a
  hot-swap needs no export).

The provenance in ``policy.json`` names the base checkpoint (path and digest), every
episode (file, digest, steps, train or validation), the hyperparameters, the training
and validation losses, the device and the code version.

On the CPU it uses one thread fewer than the machine has and lowers its own priority
(``nice``), so control loops in other processes keep their cores; CUDA is used when present.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from policies.action import ActionSpec
from policies.bc import (PRECISIONS, Episode, TrainConfig, WeightAverage, WindowSampler, bc_loss, bc_step,
                         mirror_episode, open_loop_error, training_precision, validation_loss)
from policies.checkpoint import META_FILE, _sha256, load_checkpoint, save_checkpoint
from policies.errors import CheckpointError, PolicyError
from policies.hop import HopArchitecture, HopPolicy
from policies.schema import PolicySchema
from robot_runtime import description as D
from robot_runtime.config import path_inside
from robot_runtime.control.loop import lower_priority
from robot_runtime.perception.preprocess import VisualSpec

STATE_FILE = "train_state.pt"
LOSS_PLOT = "loss.png"
KEEP_INTERVAL_CHECKPOINTS = 2


class FinetuneError(PolicyError):
    """A finetuning job cannot start or continue (bad dataset, bad resume)."""


@dataclass
class FinetuneConfig(TrainConfig):
    """The recipe (:class:`policies.bc.TrainConfig`) and the job's settings.

    A job from scratch, or from a base that carries an action representation, trains chunks
    (:mod:`policies.action`) with the few-shot recipe below; a job from a base without one (the
    public HOP layout, an imported checkpoint) keeps HOP's representation and recipe (one
    absolute target, limit scaling, noise 0.1 scaled units), as it always did.

    Attributes:
        representation: 'chunked' (the default for a job from scratch) or 'hop' (HOP's own);
            a base checkpoint's representation always wins.
        chunk, arm_mode, hand_mode, ensemble_decay: the action representation of a job from
            scratch (chunk rows; 'relative' or 'absolute' per group; the temporal ensemble's decay).
        noise_arm, noise_hand: proprio noise std (rad) per group, for a chunked job (from scratch
            or from a chunked base alike: the base's own noise is not inherited). A policy that
            sees its hand's joints exactly learns that the next hand target is where the hand is,
            and holds the cube over the bowl without letting go; with 0.1 rad on the hand and
            0.01 on the arm it has to read when to close and open from the scene (twin grasp &
            drop from the prior, 60 new placements: 0.48 with 0.003 / 0.01, 0.70 with 0.003 /
            0.1, 0.80 with 0.01 / 0.1; 0.2 on the hand spoiled the grasp, 0.35).
        proprio_steps: from scratch, how many of the window's newest steps show their joints to the
            network (0: all of them, as HOP; :class:`policies.hop.HopArchitecture`).
        mirror: train on every training demo and on its mirror image across the base's x-z plane
            (:func:`policies.bc.mirror_episode`): twice the placements for the same demos. Point
            clouds only, from a mirror-symmetric start posture.
        mirror_keep_hand: train on every training demo and on a copy at its placement mirrored
            across the base's x-z plane done by the same hand: the objects mirrored, the arm
            re-posed by inverse kinematics so that the hand's grasp and release are a right
            hand's, turned about the objects' axes (:func:`policies.augment.mirrored_keeping_the_hand`).
            For a side grasp, whose plain mirror image is held thumb down (twin grasp & pour: the
            copies of 14 of 14 demos replay to success on the mirrored placements). Round objects,
            point clouds; not with ``mirror``.
        move_others: with point clouds, also train on this many copies of each training demo's
            approach (and its mirror image's) with the objects it does not take moved to a spot in
            the rectangle the demos' other objects span
            (:func:`policies.augment.approach_with_others_moved`): which object to reach for,
            taught by the demos' own approaches. 0: off.
        turn_carry, turn_angle: with point clouds, also train on ``turn_carry`` copies of each
            training demo (and mirror image) from its grasp on, with the cell turned about joint
            1's axis by an angle drawn in +-``turn_angle`` rad
            (:func:`policies.augment.turned_after_grasp`): carries between other places. 0: off.
        shift_cell, shift_radius: with point clouds, also train on ``shift_cell`` copies of each
            training demo (and mirror image) with every object moved by an offset across the table
            (drawn in a disc of ``shift_radius`` m) and the arm's path bent onto them by inverse
            kinematics from home on (:func:`policies.augment.shifted_cell`): the whole demo at a
            placement it was not recorded at. 0: off.
        detour, detour_radius: with point clouds, also train on ``detour`` copies of each training
            demo (and mirror image) whose approach arrives off the demo's by an offset (drawn in a
            disc of ``detour_radius`` m across, half that up or down) and homes in on the object
            over the last 10 cm to the grasp (:func:`policies.augment.detoured_approach`): the way
            back from an approach that ends off, which no demo that arrives where it should shows.
            0: off.
        hand_view: with point clouds, give the network the hand's view of the scene
            (:mod:`policies.hand_view`): for each count k, the mean of the k points nearest the
            palm, in the palm's frame, embedded into each step's visual token by a small network
            that starts at zero (so a base without one starts as it was). Empty: none (the base's,
            with a base that has one).
        freeze_encoder: with a base, keep its visual encoder fixed (its embeddings are computed
            once, which makes a step several times cheaper).
        eval_every: steps between open-loop evaluations on the held-out demos (0: none).
        keep: which weights the checkpoint holds: 'lowest_error', those (the EMA's, with ``ema``)
            with the lowest open-loop error (rad) on the held-out demos at an evaluation, or
            'last', the last (the EMA's). The open-loop error of one held-out demo need not rank
            closed-loop success, and neither rule is the better (twin grasp & pour over 60
            placements, two trainings of one recipe: 0.43 with the weights the error kept and
            0.75 with the last; 0.63 and 0.55). Without held-out demos or evaluations the last
            weights are kept either way.
        select_after: with 'lowest_error', only evaluations at or after this share of ``steps``
            are candidates (the last always is). On a held-out demo whose error is flat from the
            first evaluation on, the lowest is noise, and it was the first: twin grasp & lift
            from the prior on 15 demos kept step 250 of 5,000 (the average of the weights still
            young) in two trainings, which did 0.65 and 0.75 on 20 new placements (the recipe on
            5 demos with its last weights: 0.95-1.00). Pour's error falls until step 2,000-3,000
            and picks weights there either way.
        precision: the training forward pass's ('auto': bf16 where the device multiplies bf16 in
            hardware, else fp32; :func:`policies.bc.training_precision`). The weights, the
            optimizer and every evaluation stay fp32. Twin lift at 5 demos from the prior, 60 new
            placements, 2-core Xeon: see the README's ladder for the measured effect.
        steps: optimizer steps in all (a resumed job runs up to this).
        val_fraction: share of the episodes held out for validation (at least one when there
            are two or more episodes). The default holds out one of 15 demos: every demo held out
            is one the policy does not learn from, and few-shot policies are short of demos (twin
            grasp & drop from the prior: 0.15 trained on 12 of 15, 0.30 on all 15), while the
            open-loop error that picks the weights changed by under 10% after step 250.
        save_every: steps between interval checkpoints.
        device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
        threads: CPU threads (0: one fewer than the machine has).
        nice: added to the process's niceness on the CPU (0: unchanged).
        cache_mb: 0 loads every training episode's policy input now; above 0 each is read from
            its file when a batch needs it, the last used ones kept up to this many MB and the
            next batches' read ahead (:mod:`robot_runtime.data.episode_store`): an episode set
            larger than memory. Not with the augmentations or a frozen encoder, which need the
            episodes in memory.
    """

    batch: int = 64
    lr: float = 3e-4
    warmup: int = 100
    cosine: bool = True
    ema: float = 0.995
    run: int = 1
    loss: str = "mse"
    loss_on: str = "last"
    precision: str = "auto"
    representation: str = "chunked"
    chunk: int = 10
    arm_mode: str = "relative"
    hand_mode: str = "absolute"
    ensemble_decay: float = 0.1
    noise_arm: float = 0.01
    noise_hand: float = 0.1
    proprio_steps: int = 0
    mirror: bool = False
    mirror_keep_hand: bool = False
    move_others: int = 0
    turn_carry: int = 0
    turn_angle: float = 0.4
    shift_cell: int = 0
    shift_radius: float = 0.05
    detour: int = 0
    detour_radius: float = 0.04
    hand_view: tuple[int, ...] = ()
    freeze_encoder: bool = False
    eval_every: int = 250
    keep: str = "lowest_error"
    select_after: float = 0.5
    val_fraction: float = 0.05
    save_every: int = 500
    device: str = "auto"
    threads: int = 0
    nice: int = 10
    cache_mb: float = 0.0

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{k: getattr(self, k) for k in TrainConfig.__dataclass_fields__})

    def hop_recipe(self) -> "FinetuneConfig":
        """The same job with HOP's recipe (L1 over every window step, constant lr 1e-4, no EMA, runs
        of 8 windows, noise 0.1)."""
        return replace(self, lr=1e-4, warmup=0, cosine=False, ema=0.0, run=8, proprio_noise=0.1, loss="l1",
                       loss_on="all")


#: :attr:`FinetuneConfig.keep`'s choices
KEEP_RULES = ("lowest_error", "last")


@dataclass
class EpisodeRef:
    file: str
    sha256: str
    steps: int
    split: str


@dataclass
class FinetuneResult:
    checkpoint: Path
    steps: int
    train_loss: float
    val_loss: float | None
    seconds: float
    episodes: list[EpisodeRef] = field(default_factory=list)


def code_version() -> str:
    """The package version, and the git commit when run from a checkout (``+dirty`` if modified)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        v = version("robot_runtime")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{v} ({commit}{'+dirty' if dirty else ''})" if commit else v


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("device 'cuda' asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise FinetuneError(f"device {name!r}: expected 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one training step's batch and noise: known ahead (the next batches' episodes
    are read while a step trains) and the same on every rank and after a resume."""
    return np.random.default_rng([int(seed), int(step)])


def point_statistics(episodes: list[Episode], floor: float = 0.02) -> dict:
    """The point-cloud standardisation of a network trained on ``episodes`` (their visual inputs
    [N, P, 3], m): {"point_center": mean point, "point_scale": per-axis spread, at least ``floor`` m}.
    One episode at a time (a set larger than memory streams through)."""
    n, total, squares = 0, np.zeros(3), np.zeros(3)
    centre = np.asarray(episodes[0].visual[0], np.float64).reshape(-1, 3).mean(0)   # shift: a stable variance
    for e in episodes:
        pts = np.asarray(e.visual, np.float64).reshape(-1, 3) - centre
        n += len(pts)
        total += pts.sum(0)
        squares += np.square(pts).sum(0)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return {"point_center": tuple(np.round(mean + centre, 5).tolist()),
            "point_scale": tuple(np.round(np.maximum(std, floor), 5).tolist())}


def split_by_episode(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, validation) files: whole episodes, chosen by ``seed``; no validation from one episode."""
    if not 0.0 <= val_fraction < 1.0:
        raise FinetuneError(f"val_fraction {val_fraction}: expected 0 <= val_fraction < 1")
    order = list(np.random.default_rng(seed).permutation(len(files)))
    n_val = 0 if len(files) < 2 or val_fraction == 0 else min(len(files) - 1, max(1, round(val_fraction * len(files))))
    val = sorted(files[i] for i in order[:n_val])
    return sorted(f for f in files if f not in val), val


class FinetuneJob:
    """One finetuning job (see the module docstring).

    Args:
        episodes: episode files or folders (unsuccessful and partial episodes are skipped).
        out: the output folder (the final checkpoint; interval checkpoints and train state inside).
        base: a checkpoint folder to start from, or None to start from scratch.
        cfg: hyperparameters and job settings.
        resume: continue from ``out``'s train state (it must be the same job).

    Raises:
        FinetuneError / EpisodeFileError / CheckpointError: naming the file or value at fault.
    """

    def __init__(self, episodes, out, base=None, cfg: FinetuneConfig | None = None, resume: bool = False):
        from robot_runtime.data.dataset import _expand  # noqa: PLC0415
        from robot_runtime.data.episode_file import read_meta  # noqa: PLC0415

        self.cfg = cfg or FinetuneConfig()
        self.out = Path(out)
        self.resume = resume
        files = _expand(episodes) if episodes else []
        if not files:
            raise FinetuneError(f"no episode files in {episodes}")
        metas = {f: read_meta(f) for f in files}
        used = [f for f in files if metas[f].get("success") is True and not metas[f].get("partial")]
        if not used:
            raise FinetuneError(f"none of the {len(files)} episodes in {episodes} is a complete, successful one "
                                f"(flag demos with the recorder's stop_episode success=true)")
        self.base = None
        if self.cfg.representation not in ("chunked", "hop"):
            raise FinetuneError(f"representation {self.cfg.representation!r}: expected 'chunked' or 'hop'")
        if self.cfg.keep not in KEEP_RULES:
            raise FinetuneError(f"keep {self.cfg.keep!r}: expected one of {', '.join(map(repr, KEEP_RULES))}")
        if not 0.0 <= self.cfg.select_after <= 1.0:
            raise FinetuneError(f"select_after {self.cfg.select_after!r}: expected a share of the steps in [0, 1]")
        if self.cfg.precision not in PRECISIONS:
            raise FinetuneError(f"precision {self.cfg.precision!r}: expected one of "
                                f"{', '.join(map(repr, PRECISIONS))}")
        if base is not None:
            self.base = load_checkpoint(base)
            self.arch, self.schema = self.base.arch, self.base.schema
            if self.schema.action is None and self.cfg.representation == "chunked":
                self.cfg = self.cfg.hop_recipe()   # a HOP-layout base keeps HOP's representation and recipe
            elif self.schema.action is not None:
                # the noise is the job's recipe, not the base's representation: the saved spec says
                # what this job trained with
                self.schema = replace(self.schema, action=replace(
                    self.schema.action, proprio_noise={"arm": float(self.cfg.noise_arm),
                                                       "hand": float(self.cfg.noise_hand)}))
        else:
            visual = metas[used[0]].get("visual")
            if not visual:
                raise FinetuneError(f"{used[0]}: no 'visual' preprocessing in its metadata; cannot train from scratch")
            spec = VisualSpec.from_dict(visual)
            self.schema = PolicySchema.hop(spec, policy_hz=float(metas[used[0]].get("rate_hz", 20.0)))
            self.arch = HopArchitecture(visual=spec.kind, depth_size=spec.depth.shape,
                                        num_points=spec.points.num_points,
                                        chunk=self.cfg.chunk if self.cfg.representation == "chunked" else 1,
                                        proprio_steps=self.cfg.proprio_steps)
        if self.cfg.hand_view:
            view = tuple(int(k) for k in self.cfg.hand_view)
            if self.base is not None and self.base.arch.hand_view and self.base.arch.hand_view != view:
                raise FinetuneError(f"hand_view {list(view)}: the base {self.base.path} has another, "
                                    f"{list(self.base.arch.hand_view)}")
            try:   # the architecture's own checks (point-cloud input, counts within the points)
                self.arch = HopArchitecture.from_dict({**self.arch.to_dict(), "hand_view": list(view)})
            except CheckpointError as exc:
                raise FinetuneError(str(exc)) from None
        rate = float(metas[used[0]].get("rate_hz", self.schema.policy_hz))
        if abs(rate - self.schema.policy_hz) > 1e-6:
            raise FinetuneError(f"{used[0]}: recorded at {rate:g} Hz, the checkpoint runs at {self.schema.policy_hz:g} Hz")
        train_files, val_files = split_by_episode(used, self.cfg.val_fraction, self.cfg.seed)
        self.cache = None
        if self.cfg.cache_mb:
            if self.cfg.cache_mb < 0:
                raise FinetuneError(f"cache_mb {self.cfg.cache_mb}: expected 0 (all in memory) or a size in MB")
            held = [k for k in ("mirror", "mirror_keep_hand", "move_others", "turn_carry", "shift_cell", "detour",
                                "hand_view", "freeze_encoder") if getattr(self.cfg, k)]
            if held:
                raise FinetuneError(f"cache_mb: {', '.join(held)} need the episodes in memory; drop them or "
                                    f"cache_mb")
            from robot_runtime.data.episode_store import VisualCache  # noqa: PLC0415

            self.cache = VisualCache(int(self.cfg.cache_mb * 1e6))
        self.train_eps = self._load(train_files, self.cache)
        #: the training demos' mirror images (``cfg.mirror``), trained on beside them
        self.mirrored_eps = []
        #: how many training demos had no copy at their mirrored placement (``cfg.mirror_keep_hand``)
        self.unmirrored = 0
        if self.cfg.mirror and self.cfg.mirror_keep_hand:
            raise FinetuneError("mirror and mirror_keep_hand: choose one way to mirror the demos")
        if self.cfg.mirror:
            if self.schema.visual.kind != "pointcloud":
                raise FinetuneError(f"mirror: needs point-cloud input, the checkpoint takes {self.schema.visual.kind!r}")
            self.mirrored_eps = [mirror_episode(e, D.ALL_JOINTS) for e in self.train_eps]
        if self.cfg.mirror_keep_hand:
            self.mirrored_eps = self._mirrored_keeping_the_hand(self.train_eps)
        #: copies of the training demos (and mirror images): approaches with the other objects moved
        #: (``cfg.move_others``) and carries in the turned cell (``cfg.turn_carry``), trained on beside them
        self.moved_eps = self._augmented(self.train_eps + self.mirrored_eps)
        self.val_eps = self._load(val_files)
        if self.base is None and self.cfg.representation == "chunked":
            self.schema.action = self.fit_action(self.train_eps + self.mirrored_eps)
            if self.arch.visual == "pointcloud":
                self.arch = replace(self.arch, **point_statistics(self.train_eps + self.mirrored_eps))
        elif self.cfg.representation == "hop" and self.base is None:
            self.cfg = self.cfg.hop_recipe()
        self.episodes = [EpisodeRef(str(f), _sha256(f), len(e.q), "train") for f, e in zip(train_files, self.train_eps)] + \
                        [EpisodeRef(str(f), _sha256(f), len(e.q), "val") for f, e in zip(val_files, self.val_eps)]
        self.skipped = [str(f) for f in files if f not in used]
        from robot_runtime.data.audit import audit_demos  # noqa: PLC0415

        eps = self.train_eps + self.val_eps
        #: the demo audit of the episodes used (:mod:`robot_runtime.data.audit`); its warnings name
        #: the episodes on another IK branch than the rest
        self.audit = audit_demos([e.q for e in eps], [f"{Path(r.file).parent.name}/{Path(r.file).name}"
                                                      for r in self.episodes], D.ALL_JOINTS,
                                 max(self.schema.chunk, 10), joints=range(len(D.ARM_JOINTS)))

    def fit_action(self, episodes: list[Episode]) -> ActionSpec:
        """The action representation of a job from scratch, its statistics from ``episodes``."""
        c = self.cfg
        for k in ("arm_mode", "hand_mode"):
            if getattr(c, k) not in ("absolute", "relative"):
                raise FinetuneError(f"{k} {getattr(c, k)!r}: expected 'absolute' or 'relative'")
        if c.chunk < 1:
            raise FinetuneError(f"chunk {c.chunk}: expected at least 1")
        idx = self.schema.index_in(D.ALL_JOINTS)
        return ActionSpec.fit([(e.q[:, idx], e.actions[:, idx]) for e in episodes], c.chunk,
                              {"arm": c.arm_mode, "hand": c.hand_mode}, {"arm": c.noise_arm, "hand": c.noise_hand},
                              c.ensemble_decay)

    def _mirrored_keeping_the_hand(self, episodes: list[Episode]) -> list[Episode]:
        """``cfg.mirror_keep_hand``'s copies of ``episodes``: one each where inverse kinematics
        reaches every pose (:func:`policies.augment.mirrored_keeping_the_hand`)."""
        from policies.augment import mirrored_copies  # noqa: PLC0415

        if self.schema.visual.kind != "pointcloud":
            raise FinetuneError(f"mirror_keep_hand: needs point-cloud input, the checkpoint takes "
                                f"{self.schema.visual.kind!r}")
        try:
            copies = mirrored_copies(episodes)
        except PolicyError as e:
            raise FinetuneError(f"mirror_keep_hand: {e}") from e
        self.unmirrored = sum(c is None for c in copies)
        return [c for c in copies if c is not None]

    def _augmented(self, episodes: list[Episode]) -> list[Episode]:
        """The copies ``cfg.move_others``, ``cfg.turn_carry`` and ``cfg.shift_cell`` ask for, of
        each of ``episodes`` (:mod:`policies.augment`)."""
        c = self.cfg
        if not (c.move_others or c.turn_carry or c.shift_cell or c.detour):
            return []
        from policies.augment import (approach_with_others_moved, detoured_approach,  # noqa: PLC0415
                                      scene_before_grasp, shifted_cell, turned_after_grasp)
        from robot_runtime.kinematics import UrdfModel  # noqa: PLC0415

        for key in ("move_others", "turn_carry", "shift_cell", "detour"):
            if getattr(c, key) < 0:
                raise FinetuneError(f"{key} {getattr(c, key)}: expected 0 or more copies")
            if getattr(c, key) and self.schema.visual.kind != "pointcloud":
                raise FinetuneError(f"{key}: needs point-cloud input, the checkpoint takes {self.schema.visual.kind!r}")
        if not 0.0 < c.turn_angle <= np.pi:
            raise FinetuneError(f"turn_angle {c.turn_angle}: expected an angle in (0, pi] rad")
        if not 0.0 < c.shift_radius <= 0.2:
            raise FinetuneError(f"shift_radius {c.shift_radius}: expected a distance in (0, 0.2] m")
        if not 0.0 < c.detour_radius <= 0.1:
            raise FinetuneError(f"detour_radius {c.detour_radius}: expected a distance in (0, 0.1] m")
        hand = range(len(D.ARM_JOINTS), len(D.ALL_JOINTS))
        rng = np.random.default_rng(c.seed)
        out = []
        key = "move_others"
        box = self.schema.visual.points
        try:
            if c.move_others or c.shift_cell or c.detour:
                model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
                scenes = [scene_before_grasp(e, model, hand) for e in episodes]
                spots = np.array([s.others_centre for s in scenes if s.others_centre is not None]).reshape(-1, 2)
            if c.move_others:
                out += [m for e, s in zip(episodes, scenes) for m in approach_with_others_moved(
                    e, s, spots, c.move_others, rng, box.box_min, box.box_max)]
            key = "turn_carry"
            if c.turn_carry:
                j1 = D.ALL_JOINTS.index("joint1")
                out += [t for e in episodes for t in turned_after_grasp(
                    e, hand, j1, rng.uniform(-c.turn_angle, c.turn_angle, c.turn_carry))]
            key = "shift_cell"
            arm = np.arange(len(D.ARM_JOINTS))
            if c.shift_cell:
                stood = np.concatenate([np.array([s.centre for s in scenes]), spots])
                out += [m for e, s in zip(episodes, scenes) for m in shifted_cell(
                    e, s, model, arm, stood.min(axis=0), stood.max(axis=0), c.shift_cell, rng, c.shift_radius,
                    box.box_min, box.box_max, D.FLANGE_FRAME)]
            key = "detour"
            if c.detour:
                out += [m for e, s in zip(episodes, scenes) for m in detoured_approach(
                    e, s, model, arm, c.detour, rng, c.detour_radius, flange=D.FLANGE_FRAME)]
        except PolicyError as e:
            raise FinetuneError(f"{key}: {e}") from e
        return out

    def _load(self, files: list[Path], cache=None) -> list[Episode]:
        from robot_runtime.data.dataset import load_for_training  # noqa: PLC0415

        return load_for_training(files, visual_spec=self.schema.visual.to_dict(), successful_only=True,
                                 cache=cache) if files else []

    # ------------------------------------------------------------------ run
    def _identity(self) -> dict:
        """What a resumed job must share with the one that saved the state."""
        return {"base": self.base.sha256 if self.base else "scratch",
                "episodes": [(e.sha256, e.split) for e in self.episodes],
                "config": {k: v for k, v in asdict(self.cfg).items() if k not in ("steps", "save_every", "device",
                                                                                   "threads", "nice", "cache_mb")}}

    def _setup_process(self, device: torch.device) -> str:
        if device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))   # processes on this machine (torchrun)
            cores = os.cpu_count() or 2
            n = self.cfg.threads or (max(1, cores - 1) if local == 1 else max(1, cores // local))
            torch.set_num_threads(n)
            return f"cpu, {n} threads, {lower_priority(self.cfg.nice)}"
        return f"cuda ({torch.cuda.get_device_name(device)})"

    def run(self, progress: Callable[[dict], None] | None = None, bar: bool = True) -> FinetuneResult:
        """Train to ``cfg.steps``; ``progress`` gets a dict every 10 steps and at every save."""
        from policies.distributed import BatchLoss, DistributedError, World  # noqa: PLC0415

        cfg = self.cfg
        device = pick_device(cfg.device)
        self.world = world = World.from_env(device)
        device = world.device(device)
        #: the precision the forward pass runs in ('fp32' or 'bf16'), resolved once for the job
        self.precision = training_precision(cfg.precision, device)
        where = f"{self._setup_process(device)}, {self.precision}"
        torch.manual_seed(cfg.seed)
        model = self._initial_model()
        model.to(device)
        embed = None
        if cfg.freeze_encoder and self.base is not None:
            for p in model.tokenizer.parameters():
                p.requires_grad_(False)

            @torch.no_grad()
            def frozen_embeddings(frames):
                out = [model.encode_visual(torch.from_numpy(frames[i:i + 512]).to(device)).cpu().numpy()
                       for i in range(0, len(frames), 512)]
                return np.concatenate(out)
            embed = frozen_embeddings
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay, foreach=True)   # one kernel per op, not per tensor
        ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        start, losses, vals = 0, [], []
        best = {"step": 0, "error": float("inf"), "state": None, "history": []}
        state_file = self.out / STATE_FILE
        if self.resume:
            if not state_file.is_file():
                raise FinetuneError(f"{state_file}: nothing to resume (no train state in {self.out})")
            try:   # tensors and plain values only: a train state is never unpickled as code
                st = torch.load(state_file, map_location=device, weights_only=True)
            except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, ...)
                raise FinetuneError(f"{state_file}: not a train state this version can load safely "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
            if st["identity"] != self._identity():
                raise FinetuneError(f"{state_file}: saved by a different job (base checkpoint, episodes or "
                                    f"hyperparameters differ); start a new --out or drop --resume")
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            torch.set_rng_state(st["torch_rng"])
            start, losses, vals = st["step"], st["losses"], st["val"]
            if ema is not None and st.get("ema") is not None:
                ema.model.load_state_dict(st["ema"])
                ema.updates = st.get("ema_updates", start)
            best = st.get("best", best)
        elif (self.out / META_FILE).exists() or state_file.exists():
            raise FinetuneError(f"{self.out} already holds a checkpoint or a job; pass --resume to continue it "
                                f"or choose another output folder")
        world.barrier()   # every rank has checked the folder before rank 0 writes into it
        if world.main:
            self.out.mkdir(parents=True, exist_ok=True)
        view = self.arch.hand_view
        train = WindowSampler(self.train_eps + self.mirrored_eps + self.moved_eps, self.schema, D.ALL_JOINTS, embed,
                              view)
        val = WindowSampler(self.val_eps, self.schema, D.ALL_JOINTS, embed, view) if self.val_eps else None
        if start >= cfg.steps:
            raise FinetuneError(f"{state_file}: already trained {start} of {cfg.steps} steps; raise --steps to go on")
        tc = replace(cfg.train_config(), precision=self.precision)
        ddp = None
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

            def loss_fn(m, p, f, i, a):
                return bc_loss(m, p, f, i, a, train.embedded, tc.loss, tc.loss_on)
            # find_unused_parameters: some weights feed no loss (the heads of other representations)
            ddp = DistributedDataParallel(BatchLoss(model, loss_fn), find_unused_parameters=True,
                                          device_ids=[device.index] if device.type == "cuda" else None)
        t0 = time.monotonic()
        pbar = None
        if bar and world.main:
            from tqdm import tqdm  # noqa: PLC0415
            pbar = tqdm(total=cfg.steps, initial=start, desc="finetune", unit="step")
        self._ema = ema
        try:
            model.train()
            for step in range(start, cfg.steps):
                if train.lazy:   # read the next two batches' episodes (this rank's) while this one trains
                    for ahead in (step + 1, step + 2):
                        if ahead < cfg.steps:
                            train.prefetch([w for w in train.draw(step_rng(cfg.seed, ahead), tc.batch, tc.run)
                                            if world.owns(w[0])])
                losses.append(bc_step(model, opt, train, step_rng(cfg.seed, step), tc, device, step=step,
                                      world=world, ddp=ddp))
                if ema is not None:
                    ema.update(model)
                done = step + 1
                judged = ema.model if ema is not None else model
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{losses[-1]:.4f}", val=f"{vals[-1][1]:.4f}" if vals else "-",
                                     err=f"{best['error']:.4f}" if best["state"] is not None else "-")
                saving = done % cfg.save_every == 0 or done == cfg.steps
                if not world.main:   # rank 0 alone judges, reports and writes
                    continue
                if saving and val is not None:
                    vals.append((done, validation_loss(judged, val, device, loss=cfg.loss, loss_on=cfg.loss_on)))
                if self.val_eps and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    err = open_loop_error(judged, self.schema, self.val_eps, D.ALL_JOINTS, every=4, device=device)
                    best["history"].append([done, round(err["chunk"], 6), round(err["arm"], 6), round(err["hand"], 6)])
                    if err["chunk"] < best["error"] and done >= cfg.select_after * cfg.steps:   # the last always is
                        best.update(step=done, error=err["chunk"],
                                    state={k: v.detach().cpu().clone() for k, v in judged.state_dict().items()})
                if progress is not None and (done % 10 == 0 or saving):
                    rate = (done - start) / max(time.monotonic() - t0, 1e-9)
                    progress({"step": done, "steps": cfg.steps, "loss": losses[-1],
                              "val_loss": vals[-1][1] if vals else None, "eta_s": (cfg.steps - done) / rate})
                if saving and done < cfg.steps:
                    self._save_interval(model, opt, done, losses, vals, where, best)
        except RuntimeError as exc:
            if not world.distributed or isinstance(exc, PolicyError):
                raise
            world.close()
            raise DistributedError(f"rank {world.rank} of {world.size}: training stopped at step {len(losses)}: the "
                                   f"process group failed (a rank died or hung?): {str(exc).splitlines()[0][:300]}; "
                                   f"the last saved train state is in {self.out}: rerun with --resume") from exc
        finally:
            if pbar is not None:
                pbar.close()
            if self.cache is not None:
                self.cache.close()
        self.best = best
        if self._keeps_lowest_error(best):
            kept = copy.deepcopy(model).cpu()
            kept.load_state_dict(best["state"])
        else:
            kept = ema.model if ema is not None else model
        seconds = time.monotonic() - t0
        final = self.out
        if world.main:
            final = self._save_final(model, kept, opt, cfg.steps, losses, vals, where, seconds, best)
        world.barrier()   # the others end once the checkpoint is written
        world.close()
        return FinetuneResult(final, cfg.steps, float(np.mean(losses[-20:])), vals[-1][1] if vals else None, seconds,
                              self.episodes)

    def _initial_model(self) -> HopPolicy:
        """The network training starts from: the base's, with what the job adds to its architecture
        (a hand's view) at its initial weights; or a new one."""
        if self.base is None:
            return HopPolicy(self.arch)
        if self.arch == self.base.arch:
            return self.base.build_model()
        model = HopPolicy(self.arch)
        missing, unexpected = model.load_state_dict(self.base.state, strict=False)
        added = [k for k in missing if not k.startswith("embed_hand.")]
        if added or unexpected:
            raise FinetuneError(f"{self.base.path}: its weights do not fit the job's architecture (missing "
                                f"{added[:5]}, unexpected {list(unexpected)[:5]})")
        return model

    # ------------------------------------------------------------------ saving
    def provenance(self, step: int, losses, vals, where: str, seconds: float | None = None, best=None) -> dict:
        b = self.base
        return {"source": "policies.finetune: behaviour cloning on recorded episodes",
                "base": {"path": str(b.path), "name": b.name, "sha256": b.sha256} if b else "scratch",
                "episodes": [asdict(e) for e in self.episodes], "skipped_episodes": self.skipped,
                "hyperparameters": asdict(self.cfg), "step": step,
                "train_loss": float(np.mean(losses[-20:])) if losses else None,
                "val_loss": vals[-1][1] if vals else None, "val_history": [[s, round(v, 6)] for s, v in vals],
                "device": where, "train_s": None if seconds is None else round(seconds, 1),
                "world": self.world.describe() if getattr(self, "world", None) else {"world_size": 1},
                "visual_cache": None if getattr(self, "cache", None) is None else self.cache.stats(),
                "selected": self.selected(best),
                "open_loop_history": (best or {}).get("history", []),
                "code_version": code_version()}

    def _keeps_lowest_error(self, best: dict) -> bool:
        """Whether the checkpoint holds the lowest-error weights of ``best`` (the rule asks for
        them and an evaluation found some) rather than the last."""
        return best.get("state") is not None and self.cfg.keep == "lowest_error"

    def selected(self, best=None) -> dict | None:
        """Which weights the checkpoint holds: {'step', 'open_loop_error_rad' (None when not
        evaluated there), 'by'}; None before training ends."""
        best = best if best is not None else getattr(self, "best", None)
        if not best:
            return None
        if self._keeps_lowest_error(best):
            return {"step": best["step"], "open_loop_error_rad": round(best["error"], 6),
                    "by": "mean |target error| (rad) over every joint and chunk row on the validation demos"}
        last = next((h for h in best.get("history", []) if h[0] == self.cfg.steps), None)
        return {"step": self.cfg.steps, "open_loop_error_rad": None if last is None else round(last[1], 6),
                "by": "the last weights" + (" (the EMA's)" if self.cfg.ema > 0 else "")}

    def _state(self, model, opt, step, losses, vals, best=None) -> dict:
        ema = getattr(self, "_ema", None)
        if best is not None:   # plain floats and ints: the state loads with torch.load(weights_only=True)
            best = {**best, "step": int(best["step"]), "error": float(best["error"]),
                    "history": [[int(h[0]), *map(float, h[1:])] for h in best.get("history", [])]}
        losses = [float(x) for x in losses]
        vals = [(int(s), float(v)) for s, v in vals]
        return {"identity": self._identity(), "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(), "losses": losses, "val": vals,
                "ema": None if ema is None else ema.model.state_dict(), "ema_updates": 0 if ema is None else ema.updates,
                "best": best}

    def _write_state(self, state: dict) -> None:
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / STATE_FILE)

    def _save_interval(self, model, opt, step, losses, vals, where, best=None) -> None:
        model.eval()
        ema = getattr(self, "_ema", None)
        save_checkpoint(self.out / f"step_{step:06d}", self._cpu_copy(ema.model if ema is not None else model),
                        self.schema, self.provenance(step, losses, vals, where), onnx=False)
        self._write_state(self._state(model, opt, step, losses, vals, best))
        for old in sorted(self.out.glob("step_*"))[:-KEEP_INTERVAL_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        model.train()

    def _save_final(self, model, kept, opt, step, losses, vals, where, seconds, best=None) -> Path:
        model.eval()
        self._write_state(self._state(model, opt, step, losses, vals, best))
        out = save_checkpoint(self.out, self._cpu_copy(kept), self.schema,
                              self.provenance(step, losses, vals, where, seconds, best))
        save_loss_plot(self.out / LOSS_PLOT, losses, vals, f"{self.out.name}: {len(self.train_eps)} training episodes, "
                                                          f"{len(self.val_eps)} validation")
        return out

    def _cpu_copy(self, model: HopPolicy) -> HopPolicy:
        """The network on the CPU in eval mode (the ONNX export and the saved weights want it there).
        A copy, not a new network: building one would draw from torch's generator and make a
        resumed job differ from an uninterrupted one."""
        return copy.deepcopy(model).to("cpu").eval()


def save_loss_plot(path, losses, vals, title: str = "") -> Path | None:
    """The training loss (and its 50-step mean) and the validation loss against the step, as a PNG.
    Returns None when matplotlib is not installed (the job itself does not need it)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:   # pragma: no cover - installed with the teleop extra
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(1, len(losses) + 1)
    ax.plot(x, losses, color="0.75", lw=0.6, label="train (per step)")
    if len(losses) >= 50:
        ax.plot(x[49:], np.convolve(losses, np.ones(50) / 50, mode="valid"), color="C0", lw=1.5, label="train (50-step mean)")
    if vals:
        v = np.asarray(vals, float)
        ax.plot(v[:, 0], v[:, 1], "o-", color="C3", lw=1.5, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (normalised units)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def provenance_summary(path) -> str:
    """One line about a finetuned checkpoint's provenance."""
    meta = json.loads((Path(path) / META_FILE).read_text())
    p = meta.get("provenance", {})
    base = p.get("base")
    base = base["name"] if isinstance(base, dict) else base
    n = len(p.get("episodes", []))
    val = p.get("val_loss")
    return (f"{Path(path).name}: from {base}, {n} episodes, {p.get('step')} steps, train loss {p.get('train_loss', 0):.4f}"
            + (f", val loss {val:.4f}" if val is not None else "") + f", {p.get('device')}, code {p.get('code_version')}")


#: What a job's progress lines may change in the status.
PROGRESS_KEYS = ("step", "steps", "loss", "val_loss", "eta_s")


def job_paths(episodes: list[str], out: str, base: str, episode_root: Path, out_root: Path,
              base_roots: list[Path]) -> tuple[list[str], str, str]:
    """The paths of a job asked for from outside the process (a ROS parameter any DDS peer can set),
    checked and resolved: each episode source inside ``episode_root``, ``out`` inside ``out_root``,
    ``base`` (when given) inside one of ``base_roots``; a relative value is taken from the (first)
    root. No value can become a command-line option, and no job can read, write, clean or resume
    outside those folders.

    Raises:
        FinetuneError: naming the value and the folder(s) it had to be in.
    """
    def inside(value: str, roots: list[Path], what: str) -> str:
        try:
            return str(path_inside(value, roots, what))
        except ValueError as exc:
            raise FinetuneError(str(exc)) from None
    srcs = [inside(e, [episode_root], "episodes") for e in episodes]
    return srcs, inside(out, [out_root], "out"), inside(base, base_roots, "base") if base else ""


class FinetuneSubprocess:
    """A finetuning job run as ``robot-runtime finetune`` in its own process (lower priority, its
    own threads), its progress read from the JSON lines it prints. No ROS: the finetune node
    calls :meth:`start`, forwards each update to ``on_update`` and offers :meth:`cancel`.

    ``on_update(status)`` gets the whole status dict on every change: ``state`` ('idle',
    'running', 'done', 'failed', 'cancelled'), the last progress (step, steps, loss,
    val_loss, eta_s), ``checkpoint`` and ``message`` (the job's last lines on failure).
    """

    def __init__(self, on_update: Callable[[dict], None]):
        self.on_update = on_update
        self.status: dict = {"state": "idle"}
        self._proc: subprocess.Popen | None = None
        self._cancelled = False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, episodes: list[str], out: str, base: str = "", steps: int = 2000, promote: bool = False,
              extra: list[str] | None = None) -> str:
        """Start a job; returns a one-line description. Raises FinetuneError if one is running."""
        if self.running:
            raise FinetuneError(f"a finetuning job is already running (step {self.status.get('step', 0)})")
        if not episodes or not out:
            raise FinetuneError("a finetuning job needs episode folders and an output folder")
        cmd = [sys.executable, "-m", "robot_runtime.cli", "finetune", *episodes, "--out", out, "--steps", str(steps),
               "--progress-json", *(["--base", base] if base else []), *(["--promote"] if promote else []),
               *(extra or [])]
        self._cancelled = False
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self._update({"state": "running", "out": out, "step": 0, "steps": steps, "checkpoint": "", "message": ""})
        threading.Thread(target=self._follow, args=(self._proc,), name="finetune-follow", daemon=True).start()
        return f"finetuning {len(episodes)} episode source(s) into {out} for {steps} steps (pid {self._proc.pid})"

    def cancel(self) -> str:
        if not self.running:
            raise FinetuneError("no finetuning job is running")
        self._cancelled = True
        os.killpg(self._proc.pid, signal.SIGINT)
        return f"cancelling the job at step {self.status.get('step', 0)}; its train state allows --resume"

    def _update(self, changes: dict) -> None:
        self.status = {**self.status, **changes}
        self.on_update(dict(self.status))

    def _follow(self, proc: subprocess.Popen) -> None:
        tail: list[str] = []
        for line in proc.stdout:   # read to the end whatever a line holds: a full pipe would block the job
            line = line.rstrip()
            try:
                if line.startswith("PROGRESS "):
                    try:
                        progress = json.loads(line[len("PROGRESS "):])
                    except json.JSONDecodeError:
                        progress = None
                    if isinstance(progress, dict):
                        self._update({k: v for k, v in progress.items() if k in PROGRESS_KEYS})
                    continue
                tail = (tail + [line])[-5:]
                if line.startswith("wrote "):
                    self._update({"checkpoint": line[len("wrote "):].split(":", 1)[0]})
            except Exception as exc:  # noqa: BLE001 (an on_update that failed must not end the reading)
                tail = (tail + [f"progress not followed: {exc!r}"])[-5:]
        code = proc.wait()
        state = "cancelled" if self._cancelled else ("done" if code == 0 else "failed")
        self._update({"state": state, "exit_code": code, "message": " | ".join(tail)})
