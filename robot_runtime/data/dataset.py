"""Dataset tools: list and inspect episodes, the finetuning loader, LeRobotDataset v3 export.

The finetuning loader turns recorded episodes into :class:`TrainingEpisode` objects (what
:mod:`policies.bc` trains on):
``q`` the measured joints, ``actions[k]`` the command the controllers sent at the next grid
step (``command[k + 1]``; the last step repeats), ``visual`` the recorded policy input.
It checks each episode's preprocessing against the checkpoint's, so a demo recorded for
another input never trains a policy silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime import description as D
from robot_runtime.data.episode_file import PARTIAL_SUFFIX, SUFFIX, load_episode, read_meta, read_partial
from robot_runtime.errors import EpisodeFileError, RecordingError


@dataclass
class TrainingEpisode:
    """One episode's policy steps: ``q`` [N, 23] measured joints (rad), ``actions`` [N, 23] the
    targets that followed each step (rad), ``visual`` [N, ...] the recorded policy input."""

    q: np.ndarray
    actions: np.ndarray
    visual: np.ndarray
    #: training windows end at or before this step (None: at any step); the steps after it only
    #: give the targets of the chunks made before it
    train_until: int | None = None
    #: training windows end at or after this step; the steps before it are only history
    train_from: int = 0

    def __post_init__(self):
        n = len(self.q)
        if self.q.ndim != 2 or self.actions.shape != self.q.shape or len(self.visual) != n or n == 0:
            raise EpisodeFileError(f"episode arrays do not fit: q {self.q.shape}, actions {self.actions.shape}, "
                                   f"visual {self.visual.shape}")

    @property
    def window_ends(self) -> range:
        """The steps a training window may end at."""
        n = len(self.q)
        return range(min(self.train_from, n), n if self.train_until is None else min(n, self.train_until + 1))


@dataclass
class EpisodeInfo:
    """One row of ``robot-runtime data list``."""

    path: Path
    status: str          # 'ok', 'partial' (unfinished recording), 'recovered', 'unreadable'
    task: str = ""
    steps: int = 0
    success: bool | None = None
    dropped: int = 0
    detail: str = ""


def episode_files(folder) -> list[Path]:
    """The saved episode files in ``folder`` and its subfolders (sorted by folder, then by name:
    by start time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingError(f"episode folder not found: {folder}")
    return sorted(folder.rglob(f"*{SUFFIX}"), key=lambda f: (f.parent.relative_to(folder).parts, f.name))


def _expand(paths) -> list[Path]:
    """Episode files from a file, a folder, or a list of either."""
    files = []
    for p in ([paths] if isinstance(paths, (str, Path)) else list(paths)):
        p = Path(p)
        files += episode_files(p) if p.is_dir() else [p]
    return files


def next_commands(command: np.ndarray) -> np.ndarray:
    """The behaviour-cloning action of each step: the command sent at the next step [N, 23]
    (the last step repeats its own)."""
    return np.concatenate([command[1:], command[-1:]], axis=0)


def list_episodes(folder) -> list[EpisodeInfo]:
    """Every episode and unfinished recording in ``folder``; unreadable files are listed, not skipped."""
    folder = Path(folder)
    out = []
    for path in sorted(list(folder.glob(f"*{SUFFIX}")) + list(folder.glob(f"*{PARTIAL_SUFFIX}"))):
        if path.name.endswith(PARTIAL_SUFFIX):
            try:
                meta, steps, end = read_partial(path)
                out.append(EpisodeInfo(path, "partial", meta.get("task", ""), len(steps), None, 0,
                                       f"unfinished recording ({end}); robot-runtime data recover {path.name}"))
            except (EpisodeFileError, OSError, ValueError) as exc:
                out.append(EpisodeInfo(path, "unreadable", detail=str(exc)))
            continue
        try:
            meta = read_meta(path)
        except EpisodeFileError as exc:
            out.append(EpisodeInfo(path, "unreadable", detail=str(exc)))
            continue
        out.append(EpisodeInfo(path, "recovered" if meta.get("partial") else "ok", meta.get("task", ""),
                               int(meta.get("steps", 0)), meta.get("success"), int(meta.get("dropped_steps", 0)),
                               meta.get("operator_note", "")))
    return out


def inspect_episode(path) -> dict:
    """A summary of one episode: metadata, array shapes, timing and joint ranges."""
    ep = load_episode(path, allow_partial=True)
    t = ep["t"]
    dt = np.diff(t) if len(t) > 1 else np.zeros(0)
    age = t - ep["depth_stamp"]
    return {"file": str(ep.path), "task": ep.meta["task"], "success": ep.meta.get("success"),
            "partial": ep.meta.get("partial", False), "steps": len(ep), "duration_s": float(t[-1] - t[0]),
            "rate_hz": ep.meta.get("rate_hz"), "dropped": ep.meta.get("dropped", {}),
            "grid_gaps": int(np.sum(dt > 1.5 / ep.meta["rate_hz"])) if len(dt) else 0,
            "depth_age_ms": {"p50": float(np.percentile(age, 50) * 1e3), "max": float(age.max() * 1e3)},
            "shapes": {k: list(v.shape) for k, v in ep.arrays.items()},
            "command_range": {"min": ep["command"].min(0).round(3).tolist(), "max": ep["command"].max(0).round(3).tolist()},
            "operator_note": ep.meta.get("operator_note", ""), "visual": ep.meta.get("visual")}


def load_for_training(paths, visual_spec: dict | None = None, successful_only: bool = True,
                      joint_names=D.ALL_JOINTS, cache=None):
    """Episodes (files or folders) -> list of :class:`TrainingEpisode` for behaviour cloning.

    Only the arrays training uses are read (the joints, the sent commands, the policy input).

    Args:
        visual_spec: the checkpoint's ``VisualSpec.to_dict()``; every episode must match it.
        successful_only: skip episodes not flagged successful (and always skip partial ones).
        cache: a :class:`~robot_runtime.data.episode_store.VisualCache`: each episode's policy
            input is then read from its file when used, through the cache (a set larger than
            memory), instead of now.

    Raises:
        EpisodeFileError: a file is unreadable, or its preprocessing or joints do not match.
    """
    files = _expand(paths)
    if visual_spec is not None:
        visual_spec = json.loads(json.dumps(visual_spec))   # as stored (tuples become lists)
    out = []
    from robot_runtime.data.episode_store import LazyVisual  # noqa: PLC0415

    keys = ("q", "command") if cache is not None else ("q", "command", "visual")
    for f in files:
        if successful_only and read_meta(f).get("success") is not True:
            continue
        ep = load_episode(f, allow_partial=False, keys=keys)
        if list(ep.meta.get("joint_names", [])) != list(joint_names):
            raise EpisodeFileError(f"{f}: joint order {ep.meta.get('joint_names')} is not {list(joint_names)}")
        if visual_spec is not None and ep.meta.get("visual") != visual_spec:
            raise EpisodeFileError(f"{f}: recorded with preprocessing {ep.meta.get('visual')}, but the checkpoint "
                                   f"expects {visual_spec}")
        visual = LazyVisual(f, len(ep), cache) if cache is not None else ep["visual"]
        out.append(TrainingEpisode(ep["q"].astype(np.float64), next_commands(ep["command"]).astype(np.float64),
                                   visual))
    return out


# ------------------------------------------------------------------------------------ LeRobot

#: the largest depth (mm) the LeRobot export keeps: LeRobot decodes a 16-bit PNG through
#: torchvision as int16, so larger values would wrap negative (the ZED 2 reaches 20 m)
LEROBOT_DEPTH_MAX_MM = 32767
#: the quantiles LeRobot's own writer adds to each feature's statistics
_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def depth_png(depth_mm: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of one depth image [H, W] (mm, 0 = no depth), written by Pillow.

    Values above :data:`LEROBOT_DEPTH_MAX_MM` become 0 (no depth), so the image decodes to the
    same millimetres whether it is read as uint16 (Pillow) or as int16 (LeRobot's torchvision
    path).
    """
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415 - only the export needs it

    d = np.asarray(depth_mm)
    if d.ndim != 2:
        raise ValueError(f"depth image must be [H, W], got shape {d.shape}")
    d = np.where(d > LEROBOT_DEPTH_MAX_MM, 0, d).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(d).save(buf, format="PNG")
    return buf.getvalue()


def _stats(x: np.ndarray, axis=0) -> dict:
    """LeRobot-style statistics of ``x`` over ``axis`` (min, max, mean, std, quantiles, count)."""
    x = np.asarray(x, dtype=np.float64)
    keep = x.ndim == 1
    out = {"min": x.min(axis, keepdims=keep), "max": x.max(axis, keepdims=keep),
           "mean": x.mean(axis, keepdims=keep), "std": x.std(axis, keepdims=keep)}
    for name, q in _QUANTILES.items():
        out[name] = np.quantile(x, q, axis=axis, keepdims=keep)
    out = {k: np.asarray(v).tolist() for k, v in out.items()}
    out["count"] = [int(x.shape[0])]
    return out


def _tasks_table(tasks: list[str]):
    """``meta/tasks.parquet`` as LeRobot reads it: a pandas frame indexed by the task string,
    with a ``task_index`` column (LeRobot takes an item's task from the index's value)."""
    import pyarrow as pa  # noqa: PLC0415

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), "task": tasks}, schema=schema)


def export_lerobot(paths, out_dir, repo_id: str = "robot_runtime/demos", successful_only: bool = False,
                   progress: bool = True) -> Path:
    """Write episodes in the LeRobotDataset v3 layout under ``out_dir``, as LeRobot opens it
    (``LeRobotDataset(repo_id, root=out_dir)``).

    ``meta/info.json``, ``meta/tasks.parquet`` (indexed by the task string),
    ``meta/episodes/chunk-000/file-000.parquet``, ``meta/stats.json`` (every feature, with
    ``count``) and ``data/chunk-000/file-000.parquet``, whose rows hold
    ``observation.state`` [23] (the measured joints, rad), ``action`` [23] (the next sent
    command, as in :func:`load_for_training`, rad), ``observation.visual`` (the policy input,
    float32, nested to its declared shape, e.g. [100, 3] points in m), ``observation.images.depth``
    (the raw depth as a 16-bit PNG in millimetres, 0 = no depth, clipped to
    :data:`LEROBOT_DEPTH_MAX_MM`: LeRobot decodes it as int16 millimetres),
    ``timestamp`` (s from the episode's start), ``frame_index``, ``episode_index``, ``index``
    and ``task_index``.
    """
    import pyarrow as pa  # noqa: PLC0415 - only the export needs it
    import pyarrow.parquet as pq  # noqa: PLC0415

    eps = [load_episode(f) for f in _expand(paths)]
    if successful_only:
        eps = [e for e in eps if e.meta.get("success") is True]
    if not eps:
        raise RecordingError(f"no episodes to export from {paths}")
    for e in eps[1:]:
        for key in ("rate_hz", "joint_names", "visual"):
            if e.meta.get(key) != eps[0].meta.get(key):
                raise RecordingError(f"{e.path}: {key} {e.meta.get(key)!r} differs from {eps[0].path}'s "
                                     f"{eps[0].meta.get(key)!r}; export them to separate datasets")
        for key in ("visual", "depth"):
            if e[key].shape[1:] != eps[0][key].shape[1:]:
                raise RecordingError(f"{e.path}: {key} shape {e[key].shape[1:]} differs from {eps[0].path}'s "
                                     f"{eps[0][key].shape[1:]}")
    out = Path(out_dir)
    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (out / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
    tasks = sorted({e.meta["task"] for e in eps})
    rate = float(eps[0].meta["rate_hz"])
    fps = int(rate) if rate.is_integer() else rate
    cols = {k: [] for k in ("observation.state", "action", "observation.visual", "observation.images.depth",
                            "timestamp", "frame_index", "episode_index", "index", "task_index")}
    numeric = {k: [] for k in ("observation.state", "action", "observation.visual")}
    depth_sum = {"n": 0, "sum": 0.0, "sq": 0.0, "min": np.inf, "max": -np.inf, "clipped": 0}
    depth_sample = []
    ep_rows = []
    index = 0
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(eps), desc="export", unit="ep")
    for ei, e in enumerate(eps):
        n = len(e)
        state = e["q"].astype(np.float32)
        actions = next_commands(e["command"]).astype(np.float32)
        visual = e["visual"].astype(np.float32)
        numeric["observation.state"].append(state)
        numeric["action"].append(actions)
        numeric["observation.visual"].append(visual)
        cols["observation.state"] += state.tolist()
        cols["action"] += actions.tolist()
        cols["observation.visual"] += visual.tolist()
        for d in e["depth"]:
            kept = np.where(d > LEROBOT_DEPTH_MAX_MM, 0, d).astype(np.float64)
            depth_sum["clipped"] += int(np.count_nonzero(d > LEROBOT_DEPTH_MAX_MM))
            depth_sum["n"] += kept.size
            depth_sum["sum"] += kept.sum()
            depth_sum["sq"] += np.square(kept).sum()
            depth_sum["min"] = min(depth_sum["min"], kept.min())
            depth_sum["max"] = max(depth_sum["max"], kept.max())
            depth_sample.append(kept.ravel()[::97])
            cols["observation.images.depth"].append({"bytes": depth_png(d), "path": None})
        cols["timestamp"] += (np.arange(n) / rate).astype(np.float32).tolist()
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [ei] * n
        cols["index"] += list(range(index, index + n))
        cols["task_index"] += [tasks.index(e.meta["task"])] * n
        ep_rows.append({"episode_index": ei, "tasks": [e.meta["task"]], "length": n, "data/chunk_index": 0,
                        "data/file_index": 0, "dataset_from_index": index, "dataset_to_index": index + n,
                        "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "success": e.meta.get("success"), "source_file": e.path.name})
        index += n
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("observation.state", pa.list_(pa.float32())), ("action", pa.list_(pa.float32())),
                        ("observation.visual", _nested_float32(eps[0]["visual"].ndim - 1)),
                        ("observation.images.depth", image),
                        ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
                        ("index", pa.int64()), ("task_index", pa.int64())])
    pq.write_table(pa.table(cols, schema=schema), out / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.Table.from_pylist(ep_rows), out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(_tasks_table(tasks), out / "meta" / "tasks.parquet")
    names = {"motors": list(eps[0].meta["joint_names"])}
    depth_shape = list(eps[0]["depth"].shape[1:]) + [1]
    visual_shape = list(eps[0]["visual"].shape[1:])
    features = {
        "observation.state": {"dtype": "float32", "shape": [len(names["motors"])], "names": names,
                              "info": {"unit": "rad"}},
        "action": {"dtype": "float32", "shape": [len(names["motors"])], "names": names,
                   "info": {"unit": "rad", "meaning": "the joint command sent at the next step"}},
        "observation.visual": {"dtype": "float32", "shape": visual_shape, "names": None,
                               "info": {"preprocessing": eps[0].meta.get("visual")}},
        "observation.images.depth": {"dtype": "image", "shape": depth_shape, "names": ["height", "width", "channels"],
                                     "info": {"encoding": "png, 16-bit greyscale", "unit": "mm", "invalid": 0,
                                              "decoded_dtype": "int16", "max_mm": LEROBOT_DEPTH_MAX_MM}},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v3.0", "robot_type": "xarm7_allegro", "total_episodes": len(eps),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": fps, "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
            "features": features, "repo_id": repo_id}
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    stats = {k: _stats(np.concatenate(v)) for k, v in numeric.items()}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        stats[k] = _stats(np.asarray(cols[k], dtype=np.float64))
    n = depth_sum["n"]
    mean = depth_sum["sum"] / n
    sample = np.concatenate(depth_sample)
    stats["observation.images.depth"] = {   # per channel, [1, 1, 1], in the decoded millimetres
        "min": [[[depth_sum["min"]]]], "max": [[[depth_sum["max"]]]], "mean": [[[mean]]],
        "std": [[[float(np.sqrt(max(depth_sum["sq"] / n - mean ** 2, 0.0)))]]],
        **{name: [[[float(np.quantile(sample, q))]]] for name, q in _QUANTILES.items()},
        "count": [index]}
    (out / "meta" / "stats.json").write_text(json.dumps(stats))
    if depth_sum["clipped"]:
        import logging  # noqa: PLC0415
        logging.getLogger(__name__).warning(
            "LeRobot export: %d depth pixels beyond %d mm were written as 0 (no depth)",
            depth_sum["clipped"], LEROBOT_DEPTH_MAX_MM)
    return out


def _nested_float32(depth: int):
    """A float32 list type nested ``depth`` deep (the parquet storage of LeRobot's ArrayND)."""
    import pyarrow as pa  # noqa: PLC0415

    t = pa.float32()
    for _ in range(depth):
        t = pa.list_(t)
    return t
