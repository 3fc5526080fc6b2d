"""Demo-set audit: is this set of demonstrations one a policy can fit?

A behaviour-cloning policy fed two different ways of doing the same thing from the same
start averages them. The most common way a demo set does that on a 7-DoF arm is an IK
branch split: the same hand pose reached with a wrist joint near +pi in some demos and near
-pi in others (or the elbow up or down), a choice the policy cannot see. Human teleop demos
fall into it as readily as a scripted expert.

:func:`audit_demos` looks at the measured joints of every episode at a few phases of the
episode (fractions of its length) and reports per joint:

- the spread (std, rad) of the posture across episodes at each phase;
- the spread of the per-step motion and of the motion over a chunk horizon;
- a **branch split**: at some phase, the episodes' values of the joint fall into two groups
  separated by a gap wider than ``gap_rad`` and wider than ``gap_ratio`` times the spread
  inside each group. The warning names the episodes of the smaller group.

Pure numpy; ``robot-runtime data audit DIR`` prints it, and the trainer runs it before it starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Phases (fractions of an episode's length) the posture is compared at.
PHASES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class BranchSplit:
    """A joint whose values split into two groups at a phase of the episodes."""

    joint: str
    phase: float
    gap_rad: float
    minority: list[str]
    majority_count: int
    values: dict = field(default_factory=dict)

    def message(self) -> str:
        shown = ", ".join(self.minority[:8]) + (" ..." if len(self.minority) > 8 else "")
        return (f"{self.joint} splits at {self.phase:.0%} of the episodes: {len(self.minority)} episode(s) lie "
                f"{self.gap_rad:.2f} rad away from the other {self.majority_count} ({shown}); a policy averages "
                f"the two branches. Re-record them on the majority's branch or drop them.")


@dataclass
class AuditReport:
    """What :func:`audit_demos` found. Spreads in rad, per joint in ``joint_names`` order."""

    episodes: list[str]
    joint_names: list[str]
    posture_std: np.ndarray          # [phases, J]
    step_std: np.ndarray             # [J] std of q[t+1] - q[t] over all steps
    step_mean_abs: np.ndarray        # [J]
    chunk_std: np.ndarray            # [J] std of q[t+H] - q[t]
    horizon: int
    splits: list[BranchSplit]

    @property
    def ok(self) -> bool:
        return not self.splits

    def warnings(self) -> list[str]:
        return [s.message() for s in self.splits]

    def to_dict(self) -> dict:
        return {"episodes": self.episodes, "joint_names": self.joint_names, "phases": list(PHASES),
                "posture_std_rad": np.round(self.posture_std, 4).tolist(),
                "step_std_rad": np.round(self.step_std, 5).tolist(),
                "step_mean_abs_rad": np.round(self.step_mean_abs, 5).tolist(),
                "chunk_std_rad": np.round(self.chunk_std, 4).tolist(), "horizon": self.horizon,
                "splits": [{"joint": s.joint, "phase": s.phase, "gap_rad": round(s.gap_rad, 3),
                            "minority": s.minority, "majority_count": s.majority_count} for s in self.splits],
                "ok": self.ok}

    def table(self) -> str:
        """A readable table: one row per joint."""
        head = f"{'joint':12s} " + " ".join(f"{'@' + format(p, '.0%'):>7s}" for p in PHASES) + \
            f" {'|step|':>8s} {'step sd':>8s} {f'{self.horizon}-step sd':>11s}  split"
        lines = [f"{len(self.episodes)} episodes; posture spread (std, rad) across episodes at each phase", head]
        split_joints = {s.joint for s in self.splits}
        for j, name in enumerate(self.joint_names):
            lines.append(f"{name:12s} " + " ".join(f"{self.posture_std[i, j]:7.3f}" for i in range(len(PHASES)))
                         + f" {self.step_mean_abs[j]:8.4f} {self.step_std[j]:8.4f} {self.chunk_std[j]:11.4f}  "
                         + ("SPLIT" if name in split_joints else ""))
        lines += [f"warning: {w}" for w in self.warnings()] or ["no branch split found"]
        return "\n".join(lines)


def _split(values: np.ndarray, gap_rad: float, gap_ratio: float):
    """(gap, indices of the smaller group) when ``values`` [E] fall into two separated groups, else None."""
    order = np.argsort(values)
    v = values[order]
    if len(v) < 2:
        return None
    gaps = np.diff(v)
    k = int(np.argmax(gaps))
    gap = float(gaps[k])
    lo, hi = v[:k + 1], v[k + 1:]
    inside = max(lo.std() if len(lo) > 1 else 0.0, hi.std() if len(hi) > 1 else 0.0)
    if gap < gap_rad or gap < gap_ratio * inside:
        return None
    small = order[:k + 1] if len(lo) <= len(hi) else order[k + 1:]
    return gap, np.sort(small)


def audit_demos(episodes: list[np.ndarray], names: list[str], joint_names, horizon: int = 10,
                gap_rad: float = 0.8, gap_ratio: float = 3.0, joints=None) -> AuditReport:
    """Audit measured joints ``episodes`` [[N_i, J] rad] named ``names``.

    Args:
        joint_names: [J] names of the columns.
        horizon: the chunk horizon (steps) whose motion spread is reported.
        gap_rad, gap_ratio: what counts as a branch split (see the module docstring).
        joints: the column indices checked for splits (default: all).
    """
    if not episodes:
        raise ValueError("no episodes to audit")
    joint_names = list(joint_names)
    J = len(joint_names)
    for n, q in zip(names, episodes):
        if q.ndim != 2 or q.shape[1] != J or len(q) < 2:
            raise ValueError(f"{n}: joints of shape {q.shape}, expected [N >= 2, {J}]")
    at = np.stack([np.stack([q[int(round(p * (len(q) - 1)))] for q in episodes]) for p in PHASES])   # [P, E, J]
    steps = np.concatenate([np.diff(q, axis=0) for q in episodes])
    chunks = np.concatenate([q[horizon:] - q[:-horizon] for q in episodes if len(q) > horizon] or [np.zeros((1, J))])
    splits = []
    for j in (range(J) if joints is None else joints):
        found = None
        for i, p in enumerate(PHASES):
            s = _split(at[i, :, j], gap_rad, gap_ratio)
            if s is not None and (found is None or s[0] > found.gap_rad):
                found = BranchSplit(joint_names[j], p, s[0], [names[k] for k in s[1]], len(episodes) - len(s[1]),
                                    {names[k]: round(float(at[i, k, j]), 3) for k in range(len(episodes))})
        if found is not None:
            splits.append(found)
    return AuditReport(list(names), joint_names, at.std(axis=1), steps.std(0), np.abs(steps).mean(0),
                       chunks.std(0), horizon, splits)


def audit_folder(paths, horizon: int = 10, successful_only: bool = True, **kw) -> AuditReport:
    """:func:`audit_demos` on the episode files in ``paths`` (folders or files), arm and hand joints
    as recorded; split checks on the arm joints (the hand has no IK branches)."""
    from robot_runtime import description as D  # noqa: PLC0415
    from robot_runtime.data.dataset import _expand  # noqa: PLC0415
    from robot_runtime.data.episode_file import load_episode  # noqa: PLC0415

    qs, names = [], []
    for f in _expand(paths):
        ep = load_episode(f, allow_partial=False)
        if successful_only and ep.meta.get("success") is not True:
            continue
        qs.append(np.asarray(ep["q"], float))
        seed = ep.meta.get("seed")
        names.append(f"{Path(f).parent.name}/{Path(f).name}" + (f" (seed {seed})" if isinstance(seed, int) else ""))
    if not qs:
        raise ValueError(f"no {'successful ' if successful_only else ''}episodes in {paths}")
    return audit_demos(qs, names, list(D.ALL_JOINTS), horizon, joints=range(len(D.ARM_JOINTS)), **kw)
