"""The action representation a checkpoint was trained with, and how the runtime executes it.

A checkpoint with an ``action`` entry in its schema (:class:`ActionSpec`) predicts, at every
tick, a *chunk* of ``H`` future joint targets (the targets for the next ``H`` ticks), each
joint either

- ``absolute``: the target itself (rad), or
- ``relative``: the target minus the joints measured at the tick the chunk was made (rad),

and normalised per (chunk index, joint) by statistics of the training episodes
(``(x - mean) / std``, the spread floored so a joint that barely moves is not blown up).
The proprio input is normalised the same way, per joint.

:class:`TemporalEnsembler` executes chunks: every tick adds the new chunk, stamped with the
time its first row is for; the target for a time ``t`` is the weighted mean of every stored
chunk's row for ``t`` (a chunk made ``k`` ticks ago weighs ``exp(-decay * k)``), in joint
space, before the safety shield.

A checkpoint without the entry (the public HOP layout, anything ``policy import`` makes)
has :data:`None` for its spec and behaves as HOP does: one absolute target per tick, both
proprio and actions scaled by the joint limits.

Arrays are in the policy's joint order (the schema's), radians.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.errors import SchemaMismatchError

MODES = ("absolute", "relative")
#: Joint groups a mode is chosen for, as policy slots (7 arm joints, then the hand).
GROUPS = {"arm": slice(0, 7), "hand": slice(7, None)}


@dataclass
class ActionSpec:
    """See the module docstring.

    Attributes:
        chunk: H, targets predicted per tick (row k is for k + 1 ticks after the tick).
        modes: {"arm": mode, "hand": mode}, mode in :data:`MODES`.
        proprio_mean, proprio_std: [J] normalisation of the joints fed to the network (rad).
        action_mean, action_std: [H, J] normalisation of the predicted rows (rad).
        ensemble_decay: the temporal ensemble's weight decay per tick of a chunk's age (1/tick):
            positive favours the newest chunk, negative the oldest (as ACT's), 0 weighs all alike.
        proprio_noise: {"arm": rad, "hand": rad}: std of the noise added to the joints in training.
    """

    chunk: int
    modes: dict
    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    ensemble_decay: float = 0.1
    proprio_noise: dict = field(default_factory=lambda: {"arm": 0.0, "hand": 0.0})

    def __post_init__(self):
        self.proprio_mean = np.asarray(self.proprio_mean, np.float64)
        self.proprio_std = np.asarray(self.proprio_std, np.float64)
        self.action_mean = np.asarray(self.action_mean, np.float64)
        self.action_std = np.asarray(self.action_std, np.float64)
        self.check()

    # ------------------------------------------------------------------ checks
    def check(self, where: str = "action") -> None:
        """Raises SchemaMismatchError naming the field that does not fit."""
        if int(self.chunk) < 1:
            raise SchemaMismatchError(f"{where}: chunk must be at least 1, got {self.chunk}")
        if set(self.modes) != set(GROUPS) or any(m not in MODES for m in self.modes.values()):
            raise SchemaMismatchError(f"{where}: modes must give each of {sorted(GROUPS)} one of {list(MODES)}, "
                                      f"got {self.modes}")
        j = self.proprio_mean.shape[0] if self.proprio_mean.ndim == 1 else -1
        for name, arr, shape in (("proprio_mean", self.proprio_mean, (j,)), ("proprio_std", self.proprio_std, (j,)),
                                 ("action_mean", self.action_mean, (self.chunk, j)),
                                 ("action_std", self.action_std, (self.chunk, j))):
            if arr.shape != shape:
                raise SchemaMismatchError(f"{where}: {name} has shape {arr.shape}, expected {shape}")
            if not np.all(np.isfinite(arr)):
                raise SchemaMismatchError(f"{where}: {name} holds non-finite values")
        for name, arr in (("proprio_std", self.proprio_std), ("action_std", self.action_std)):
            if np.any(arr <= 0):
                raise SchemaMismatchError(f"{where}: {name} must be positive")
        if not np.isfinite(self.ensemble_decay) or abs(self.ensemble_decay) > 5:
            raise SchemaMismatchError(f"{where}: ensemble_decay must be finite, within +-5, got {self.ensemble_decay}")

    @property
    def dim(self) -> int:
        return int(self.proprio_mean.shape[0])

    def relative_mask(self) -> np.ndarray:
        """[J] True where the targets are relative to the measured joints."""
        m = np.zeros(self.dim, bool)
        for g, sl in GROUPS.items():
            m[sl] = self.modes[g] == "relative"
        return m

    def noise_std(self) -> np.ndarray:
        """[J] the proprio noise of training, rad."""
        s = np.zeros(self.dim)
        for g, sl in GROUPS.items():
            s[sl] = float(self.proprio_noise.get(g, 0.0))
        return s

    # ------------------------------------------------------------------ network <-> radians
    def proprio_in(self, q: np.ndarray) -> np.ndarray:
        """Joints [..., J] (rad) -> the network's proprio input (float32)."""
        return ((np.asarray(q, np.float64) - self.proprio_mean) / self.proprio_std).astype(np.float32)

    def targets(self, out: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """The network's output [H * J] or [H, J] and the joints [J] measured at the tick -> targets [H, J] (rad)."""
        x = np.asarray(out, np.float64).reshape(self.chunk, self.dim) * self.action_std + self.action_mean
        rel = self.relative_mask()
        x[:, rel] += np.asarray(q_now, np.float64)[rel]
        return x

    def rows(self, q: np.ndarray, actions: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Training targets: for steps ``t`` [N] of one episode (joints ``q`` [L, J], the targets sent
        ``actions`` [L, J]: ``actions[s]`` is for step s + 1), the rows [N, H, J] (rad, relative where
        asked) of the chunks made at those steps. Past the episode's end the last target repeats."""
        t = np.asarray(t)
        idx = np.minimum(t[:, None] + np.arange(self.chunk)[None], len(actions) - 1)
        x = np.asarray(actions, np.float64)[idx]
        rel = self.relative_mask()
        x[:, :, rel] -= np.asarray(q, np.float64)[t][:, None, rel]
        return x

    def action_out(self, rows: np.ndarray) -> np.ndarray:
        """Rows [..., H, J] (rad) -> the network's normalised targets (float32)."""
        return ((rows - self.action_mean) / self.action_std).astype(np.float32)

    # ------------------------------------------------------------------ statistics
    @classmethod
    def fit(cls, episodes, chunk: int, modes: dict, proprio_noise: dict | None = None, ensemble_decay: float = 0.1,
            proprio_floor: float = 0.05, action_floor: dict | None = None) -> "ActionSpec":
        """Statistics from training episodes ``[(q [L, J], actions [L, J])]`` (policy order, rad).

        The spreads are floored: ``proprio_floor`` (rad) for the joints; for the rows,
        ``action_floor[mode]`` (rad; default 0.01 relative, 0.05 absolute), so that a joint the
        demos hardly move does not turn noise into a large normalised value.
        """
        floors = {"relative": 0.01, "absolute": 0.05, **(action_floor or {})}
        qs = np.concatenate([np.asarray(q, np.float64) for q, _ in episodes])
        spec = cls(chunk, dict(modes), np.zeros(qs.shape[1]), np.ones(qs.shape[1]), np.zeros((chunk, qs.shape[1])),
                   np.ones((chunk, qs.shape[1])), ensemble_decay, dict(proprio_noise or {"arm": 0.0, "hand": 0.0}))
        rows = np.concatenate([spec.rows(q, a, np.arange(len(q))) for q, a in episodes])
        floor = np.where(spec.relative_mask(), floors["relative"], floors["absolute"])
        spec.proprio_mean, spec.proprio_std = qs.mean(0), np.maximum(qs.std(0), proprio_floor)
        spec.action_mean, spec.action_std = rows.mean(0), np.maximum(rows.std(0), floor[None])
        spec.check()
        return spec

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        r = lambda a: np.round(np.asarray(a, np.float64), 7).tolist()  # noqa: E731
        return {"chunk": int(self.chunk), "modes": dict(self.modes), "proprio_mean": r(self.proprio_mean),
                "proprio_std": r(self.proprio_std), "action_mean": r(self.action_mean),
                "action_std": r(self.action_std), "ensemble_decay": float(self.ensemble_decay),
                "proprio_noise": {k: float(v) for k, v in self.proprio_noise.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ActionSpec":
        if not isinstance(d, dict):
            raise SchemaMismatchError(f"action: expected a mapping, got {type(d).__name__}")
        missing = [k for k in ("chunk", "modes", "proprio_mean", "proprio_std", "action_mean", "action_std")
                   if k not in d]
        if missing:
            raise SchemaMismatchError(f"action: missing keys {missing}")
        try:
            return cls(int(d["chunk"]), dict(d["modes"]), np.asarray(d["proprio_mean"], float),
                       np.asarray(d["proprio_std"], float), np.asarray(d["action_mean"], float),
                       np.asarray(d["action_std"], float), float(d.get("ensemble_decay", 0.1)),
                       dict(d.get("proprio_noise") or {"arm": 0.0, "hand": 0.0}))
        except (TypeError, ValueError) as exc:
            raise SchemaMismatchError(f"action: {exc}") from exc


class TemporalEnsembler:
    """Overlapping chunks blended into one target per tick (see the module docstring).

    Args:
        period_s: the policy period (s): row k of a chunk stamped ``t0`` is for ``t0 + k * period_s``.
        chunk: H, rows per chunk.
        decay: a chunk made k ticks before the one being asked for weighs ``exp(-decay * k)``.
    """

    def __init__(self, period_s: float, chunk: int, decay: float):
        self.period_s, self.chunk, self.decay = float(period_s), int(chunk), float(decay)
        self._chunks: list[tuple[float, np.ndarray]] = []

    def clear(self) -> None:
        self._chunks.clear()

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, t0: float, rows: np.ndarray) -> None:
        """A chunk [H, J] whose first row is the target for time ``t0`` (s)."""
        self._chunks.append((float(t0), np.asarray(rows, np.float64)))
        horizon = self.chunk * self.period_s
        self._chunks = [(t, r) for t, r in self._chunks if t0 - t < horizon - 0.5 * self.period_s]

    def target(self, t: float) -> np.ndarray | None:
        """The blended target [J] for time ``t`` (s), or None when no stored chunk covers it."""
        total, weight = None, 0.0
        newest = max((t0 for t0, _ in self._chunks), default=None)
        for t0, rows in self._chunks:
            k = int(round((t - t0) / self.period_s))
            if not 0 <= k < len(rows):
                continue
            age = int(round((newest - t0) / self.period_s))
            w = float(np.exp(-self.decay * age))
            total = rows[k] * w if total is None else total + rows[k] * w
            weight += w
        return None if total is None else total / weight
