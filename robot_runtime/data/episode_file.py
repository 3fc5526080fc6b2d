"""One file per episode, crash-safe.

While an episode records, every step is appended to ``<stem>.partial``: a header record
(the episode's metadata) and one record per step, each framed as
``b"RREP" | length (uint32) | crc32 (uint32) | payload`` (the payload an ``.npz`` of that
step's arrays). Saving writes ``<stem>.episode.npz.tmp``, flushes it to disk, renames it
to ``<stem>.episode.npz`` (atomic), and only then deletes the ``.partial``.

So a killed recorder leaves, at worst, a ``.partial``: loaders take only
``*.episode.npz`` files whose metadata says ``complete``, ``robot-runtime data list``
shows the ``.partial`` as such, and :func:`recover_partial` turns its intact records into
an episode marked ``partial`` (never silently mixed into training).

Episode arrays (N steps on the policy's grid, joint arrays in the robot's joint order
``meta["joint_names"]`` unless named otherwise):

- ``t`` [N] grid time (s, wall clock); ``depth_stamp``, ``arm_state_stamp``,
  ``hand_state_stamp`` [N] and ``command_stamp`` [N, 2] (arm, hand): acquisition times (s);
- ``q`` [N, 23] measured joints (rad); ``proprio`` [N, 23] the same in the policy's order
  (``meta["proprio_joint_names"]``);
- ``command`` [N, 23] what the controllers sent after the safety shield (rad);
- ``visual`` [N, ...] float32 policy-ready input from :mod:`robot_runtime.perception.preprocess`;
- ``depth`` [N, h, w] uint16 raw depth at reduced size (mm, 0 = no depth).
"""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime.errors import EpisodeFileError

FORMAT = "robot_runtime.episode/1"
SUFFIX = ".episode.npz"
PARTIAL_SUFFIX = ".partial"
MAGIC = b"RREP"
_HEAD = struct.Struct("<4sII")
STEP_KEYS = ("t", "depth_stamp", "arm_state_stamp", "hand_state_stamp", "command_stamp", "q", "proprio", "command",
             "visual", "depth")


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialLog:
    """The append-only log of an episode being recorded (``<stem>.partial``).

    Every write goes straight to the file (flushed; :meth:`sync` makes it durable, which the
    recorder's writer does about once a second and at close); an ``OSError`` (a full disk)
    propagates to the recorder.
    """

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self._f = open(self.path, "xb")
        self.bytes = 0
        self._write(json.dumps(meta).encode())

    def _write(self, payload: bytes) -> None:
        rec = _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        self._f.write(rec)
        self._f.flush()
        self.bytes += len(rec)

    def append(self, step: dict) -> None:
        self._write(_npz_bytes(step))

    def sync(self) -> None:
        """Make what is written durable (fsync): a power cut loses at most what came after."""
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            try:
                self.sync()
            finally:
                self._f.close()

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def read_partial(path) -> tuple[dict, list[dict], str]:
    """The metadata, the intact steps and how the log ends ('clean' or what cut it short)."""
    path = Path(path)
    data = path.read_bytes()
    pos, records, end = 0, [], "clean"
    while pos < len(data):
        if len(data) - pos < _HEAD.size:
            end = f"truncated record header at byte {pos}"
            break
        magic, n, crc = _HEAD.unpack_from(data, pos)
        payload = data[pos + _HEAD.size:pos + _HEAD.size + n]
        if magic != MAGIC or len(payload) != n or zlib.crc32(payload) != crc:
            end = f"torn or corrupt record at byte {pos}"
            break
        records.append(payload)
        pos += _HEAD.size + n
    if not records:
        raise EpisodeFileError(f"{path}: no intact header record ({end})")
    try:
        meta = json.loads(records[0])
    except ValueError as exc:
        raise EpisodeFileError(f"{path}: header record is not JSON: {exc}") from exc
    steps = []
    for r in records[1:]:
        with np.load(io.BytesIO(r)) as z:
            steps.append({k: z[k] for k in z.files})
    return meta, steps, end


def stack_steps(steps: list[dict]) -> dict[str, np.ndarray]:
    """Per-step dicts -> arrays with a leading step axis (empty arrays for no steps)."""
    if not steps:
        return {}
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def write_episode(path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write an episode atomically: ``<path>.tmp``, fsync, rename, fsync the folder.

    Raises:
        OSError: the write failed (for instance a full disk); no file named ``path`` is left.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                z.writestr("meta.json", json.dumps(meta, indent=1))
                for k, v in arrays.items():
                    buf = io.BytesIO()
                    np.save(buf, np.ascontiguousarray(v), allow_pickle=False)
                    z.writestr(f"{k}.npy", buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass
class EpisodeData:
    """A loaded episode: its arrays (see the module docstring) and metadata."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays["t"])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def read_meta(path) -> dict:
    """Only the metadata of an episode file (fast: reads one zip member)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("meta.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise EpisodeFileError(f"{path}: not a readable episode file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise EpisodeFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_episode(path, allow_partial: bool = False, keys=None) -> EpisodeData:
    """Load and check one ``*.episode.npz``; ``keys``: only these arrays (and ``t``), the others
    left on disk (training needs three of the ten, and not the raw depth, the largest).

    Raises:
        EpisodeFileError: not an episode file, a partial one (unless ``allow_partial``), a
            corrupt member (zip CRC), or arrays whose lengths disagree; the message names the file.
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise EpisodeFileError(f"{path}: an unfinished recording (the recorder stopped mid-episode); "
                               f"recover it with `robot-runtime data recover {path}`")
    meta = read_meta(path)
    if meta.get("partial") and not allow_partial:
        raise EpisodeFileError(f"{path}: recovered from an unfinished recording (partial); pass allow_partial "
                               f"to use it")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            wanted = None if keys is None else {*keys, "t"}
            for name in z.namelist():
                if name.endswith(".npy") and (wanted is None or name[:-4] in wanted):
                    arrays[name[:-4]] = np.load(io.BytesIO(z.read(name)), allow_pickle=False)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise EpisodeFileError(f"{path}: corrupt episode file: {exc}") from exc
    missing = [k for k in (STEP_KEYS if keys is None else {*keys, "t"}) if k not in arrays]
    if missing:
        raise EpisodeFileError(f"{path}: missing arrays {missing}")
    n = len(arrays["t"])
    bad = {k: v.shape for k, v in arrays.items() if len(v) != n}
    if bad:
        raise EpisodeFileError(f"{path}: arrays disagree on the step count {n}: {bad}")
    if meta.get("steps") != n:
        raise EpisodeFileError(f"{path}: metadata says {meta.get('steps')} steps, the arrays hold {n}")
    return EpisodeData(path, meta, arrays)


def recover_partial(path, out=None) -> Path:
    """Turn an unfinished recording's intact steps into an episode marked ``partial``.

    Returns the new file (``<stem>.recovered.episode.npz`` beside it unless ``out``); the
    ``.partial`` is left in place for the operator to delete.
    """
    path = Path(path)
    meta, steps, end = read_partial(path)
    if not steps:
        raise EpisodeFileError(f"{path}: no complete step to recover ({end})")
    stem = path.name[:-len(PARTIAL_SUFFIX)]
    out = Path(out) if out else path.with_name(stem + ".recovered" + SUFFIX)
    meta = {**meta, "complete": True, "partial": True, "success": None, "steps": len(steps),
            "recovered_from": path.name, "log_end": end}
    return write_episode(out, stack_steps(steps), meta)
