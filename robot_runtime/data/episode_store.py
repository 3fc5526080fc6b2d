"""Episode sets larger than memory: each episode's policy input read on use, through a bounded cache.

Training keeps the small arrays of every episode in memory (the joints and the targets: 23 + 23
numbers a step) and reads the large one, the recorded policy input (``visual``), from the
episode file when a batch needs it. :class:`VisualCache` holds the most recently used ones up to
``max_bytes`` and loads ahead on background threads (:meth:`VisualCache.prefetch`: the trainer
knows its next batches), so a set many times the RAM trains at the speed of one held in memory
as long as the disk keeps up (zlib inflates outside the GIL).
"""
from __future__ import annotations

import io
import threading
import zipfile
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from robot_runtime.errors import EpisodeFileError


def read_member(path, name: str) -> np.ndarray:
    """One array (``name``, e.g. ``visual``) of an episode file, without reading the others."""
    try:
        with zipfile.ZipFile(path) as z:
            return np.load(io.BytesIO(z.read(f"{name}.npy")), allow_pickle=False)
    except KeyError as exc:
        raise EpisodeFileError(f"{path}: no array {name!r}") from exc
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise EpisodeFileError(f"{path}: corrupt episode file: {exc}") from exc


class VisualCache:
    """The ``visual`` arrays of episode files, least recently used dropped past ``max_bytes``.

    Thread-safe; :meth:`prefetch` loads on ``workers`` background threads. The episodes of the
    last ``pinned_calls`` prefetches (the batches being trained and read ahead) are never
    dropped, so a bound smaller than a few batches' episodes is exceeded rather than thrashed.
    ``hits``, ``misses`` (a batch waited for the disk) and ``loads`` count what happened.
    """

    def __init__(self, max_bytes: int, workers: int = 2, pinned_calls: int = 4):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes {max_bytes}: expected a positive size")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._bytes = 0
        self._pins: deque[set[str]] = deque(maxlen=pinned_calls)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="visual-cache")
        self.hits = self.misses = self.loads = 0
        self.peak_bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def _load(self, path: str) -> np.ndarray:
        arr = np.asarray(read_member(path, "visual"), np.float32)
        arr.setflags(write=False)
        with self._lock:
            self.loads += 1
            self._pending.pop(path, None)
            if path not in self._items:
                self._items[path] = arr
                self._bytes += arr.nbytes
                self._evict()
                self.peak_bytes = max(self.peak_bytes, self._bytes)
        return arr

    def _evict(self) -> None:
        """Drop the least recently used unpinned arrays until within the bound (lock held)."""
        if self._bytes <= self.max_bytes:
            return
        pinned = set().union(*self._pins) if self._pins else set()
        for key in [k for k in self._items if k not in pinned]:
            if self._bytes <= self.max_bytes or len(self._items) <= 1:
                break
            self._bytes -= self._items.pop(key).nbytes

    def get(self, path: str) -> np.ndarray:
        """The episode's visual array [N, ...] (float32, read-only)."""
        with self._lock:
            arr = self._items.get(path)
            if arr is not None:
                self._items.move_to_end(path)
                self.hits += 1
                return arr
            fut = self._pending.get(path)
            self.misses += fut is None
        return fut.result() if fut is not None else self._load(path)

    def prefetch(self, paths) -> None:
        """Start loading these episodes' arrays (those neither held nor on their way)."""
        paths = list(dict.fromkeys(paths))
        with self._lock:
            self._pins.append(set(paths))
            todo = [p for p in paths if p not in self._items and p not in self._pending]
            for p in todo:
                self._pending[p] = self._pool.submit(self._load, p)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def stats(self) -> dict:
        """What the provenance records: the bound, the most held, and how reads went."""
        return {"max_mb": round(self.max_bytes / 1e6, 3), "peak_mb": round(self.peak_bytes / 1e6, 3),
                "loads": self.loads, "hits": self.hits, "misses": self.misses}


class LazyVisual:
    """One episode's ``visual`` [N, ...], read through a :class:`VisualCache` when indexed."""

    def __init__(self, path, steps: int, cache: VisualCache):
        self.path, self.steps, self.cache = str(Path(path)), int(steps), cache

    def __len__(self) -> int:
        return self.steps

    def array(self) -> np.ndarray:
        return self.cache.get(self.path)

    def __getitem__(self, index):
        return self.array()[index]

    def __array__(self, dtype=None, copy=None):
        arr = self.array()
        return arr if dtype is None else arr.astype(dtype)
