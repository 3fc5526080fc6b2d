"""The policy's context window, padded at the start of an episode exactly as in training.

Before step ``length - 1`` of an episode the window repeats the episode's first step in
front: the window ending at step ``t`` holds steps ``max(0, t - length + 1 + i)``. The
trainer builds its windows with :func:`window_indices`, and :class:`StepHistory` gives the
runtime the same windows.
"""
from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import numpy as np

S = TypeVar("S")


def window_indices(t: int, length: int) -> np.ndarray:
    """Indices of the steps in the window ending at step ``t`` [length], start-padded with step 0."""
    return np.maximum(np.arange(t - length + 1, t + 1), 0)


class StepHistory(Generic[S]):
    """The last ``length`` steps of an episode; :meth:`window` pads like :func:`window_indices`."""

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"history length must be at least 1, got {length}")
        self.length = length
        self._steps: deque = deque(maxlen=length)
        self.count = 0   # steps appended since the episode started

    def clear(self) -> None:
        self._steps.clear()
        self.count = 0

    def append(self, step: S) -> None:
        self._steps.append(step)
        self.count += 1

    def steps(self) -> list[S]:
        """The stored steps, oldest first (at most ``length``)."""
        return list(self._steps)

    def replace(self, steps: list[S]) -> None:
        """Put new versions of the stored steps in place (same count, same order)."""
        if len(steps) != len(self._steps):
            raise ValueError(f"replace got {len(steps)} steps for {len(self._steps)} stored")
        self._steps = deque(steps, maxlen=self.length)

    def __len__(self) -> int:
        return len(self._steps)

    def window(self) -> list[S]:
        """``length`` steps ending with the newest; padded at the start with the episode's first step.

        Only valid while the episode's first step is still stored or the window is full.
        """
        if not self._steps:
            raise ValueError("the history is empty")
        steps = list(self._steps)
        return [steps[0]] * (self.length - len(steps)) + steps
