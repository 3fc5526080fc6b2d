"""Checkpoint format: a folder with ``model.safetensors`` (weights) and ``policy.json``.

``policy.json``::

    {"format": "robot_runtime.hop/1",
     "architecture": {...HopArchitecture...},
     "schema": {...PolicySchema: joint names and order, scaling limits, visual input and
                its preprocessing, history, policy rate...},
     "provenance": {"created": ISO time, "source": ..., free-form fields},
     "weights": {"file": "model.safetensors", "sha256": hex digest},
     "onnx": {"opset": 20, "version": export version, "history": 16, "weights_sha256": the weights' digest,
              "encoder": {"file", "sha256"}, "trunk": {"file", "sha256"}}}

Every file entry is a path relative to the folder that stays inside it, every digest is
required, and the ONNX files are used only when made from exactly these weights
(``weights_sha256``): a ``policy.json`` is input from whoever wrote the folder.

The ONNX files (``onnx/encoder.onnx``, ``onnx/trunk.onnx``) are exported when the
checkpoint is saved, so loading it, and hot-swapping it into a running policy, needs no
export; a checkpoint without them (or whose files do not match their digests) is
exported on load instead.

:func:`load_checkpoint` checks the file's integrity (digest), that the weights have
exactly the names and shapes the architecture needs, that every weight is finite, and
that the architecture and schema agree. :meth:`Checkpoint.check_against_robot` checks
the schema against the live robot. Every failure is a :class:`CheckpointError` that
names the file and what is wrong.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from policies.errors import CheckpointError, SchemaMismatchError
from policies.hop import HopArchitecture, HopPolicy
from policies.onnx_export import EXPORT_VERSION, OPSET, export_onnx
from policies.schema import PolicySchema
from robot_runtime.perception.preprocess import PreprocessError

FORMAT = "robot_runtime.hop/1"
#: The format of a checkpoint whose schema carries an action representation (chunks, relative
#: targets, normalisation): code that knows only /1 refuses it instead of misreading its actions.
FORMAT_ACTION = "robot_runtime.hop/2"
FORMATS = (FORMAT, FORMAT_ACTION)
META_FILE = "policy.json"
WEIGHTS_FILE = "model.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A loaded, self-consistent checkpoint (weights on the CPU)."""

    path: Path
    arch: HopArchitecture
    schema: PolicySchema
    state: dict[str, torch.Tensor]
    sha256: str
    provenance: dict = field(default_factory=dict)
    onnx: dict = field(default_factory=dict)

    def onnx_files(self, opset: int, version: int) -> tuple[Path, Path] | None:
        """The checkpoint's own exported (encoder, trunk) files when present, intact, and made with
        ``opset`` by export ``version``."""
        o = self.onnx
        if not o or o.get("opset") != opset or o.get("version") != version or o.get("history") != self.schema.history \
                or o.get("weights_sha256") != self.sha256:
            return None
        paths = []
        for part in ("encoder", "trunk"):
            entry = o.get(part) or {}
            f = self.path / str(entry.get("file", ""))
            if not entry.get("file") or not f.is_file() or _sha256(f) != entry.get("sha256"):
                return None
            paths.append(f)
        return paths[0], paths[1]

    @property
    def name(self) -> str:
        return f"{self.path.name}@{self.sha256[:8]}"

    def build_model(self) -> HopPolicy:
        """The network with these weights, in eval mode."""
        model = HopPolicy(self.arch)
        model.load_state_dict(self.state, strict=True)
        return model.eval()

    def check_against_robot(self, live_names, live_limits, policy_hz: float) -> None:
        """Raises SchemaMismatchError naming this checkpoint and what does not fit the live robot."""
        self.schema.check_against_robot(live_names, live_limits, policy_hz, where=str(self.path))


def save_checkpoint(folder, model: HopPolicy, schema: PolicySchema, provenance: dict | None = None,
                    onnx: bool = True) -> Path:
    """Write ``model`` and its schema (and, with ``onnx``, its exported ONNX files) to ``folder``
    (created); returns the folder.

    The weights are written first, then ``policy.json`` atomically, so a reader never sees
    a json that points at half-written weights.
    """
    from safetensors.torch import save_file  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_consistent(model.arch, schema, folder)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, weights)
    meta = {
        "format": FORMAT if schema.action is None else FORMAT_ACTION,
        "architecture": model.arch.to_dict(),
        "schema": schema.to_dict(),
        "provenance": {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       **(provenance or {})},
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights)},
    }
    if onnx:
        ck = Checkpoint(folder, model.arch, schema, {}, meta["weights"]["sha256"])
        out = folder / "onnx"
        for f in ("encoder.onnx", "trunk.onnx"):
            (out / f).unlink(missing_ok=True)
        enc, trunk = export_onnx(ck, out, model)
        meta["onnx"] = {"opset": OPSET, "version": EXPORT_VERSION, "history": schema.history,
                        "weights_sha256": meta["weights"]["sha256"],
                        "encoder": {"file": f"onnx/{enc.name}", "sha256": _sha256(enc)},
                        "trunk": {"file": f"onnx/{trunk.name}", "sha256": _sha256(trunk)}}
    fd, tmp_meta = tempfile.mkstemp(dir=folder, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=2)
    os.chmod(tmp_meta, 0o644)
    os.replace(tmp_meta, folder / META_FILE)
    return folder


def _check_consistent(arch: HopArchitecture, schema: PolicySchema, where) -> None:
    v = schema.visual
    problems = []
    if arch.visual != v.kind:
        problems.append(f"architecture visual {arch.visual!r} but schema visual {v.kind!r}")
    if v.kind == "depth" and tuple(arch.depth_size) != v.depth.shape:
        problems.append(f"architecture depth_size {tuple(arch.depth_size)} but preprocessing gives {v.depth.shape}")
    if v.kind == "pointcloud" and arch.num_points != v.points.num_points:
        problems.append(f"architecture num_points {arch.num_points} but preprocessing gives {v.points.num_points}")
    if arch.proprio_dim != schema.dim or arch.action_dim != schema.dim:
        problems.append(f"architecture proprio/action dims {arch.proprio_dim}/{arch.action_dim} but the schema "
                        f"names {schema.dim} joints")
    if arch.chunk != schema.chunk:
        problems.append(f"architecture chunk {arch.chunk} but the schema's action representation has chunk "
                        f"{schema.chunk}")
    if schema.history > arch.timestep_rows:
        problems.append(f"history {schema.history} exceeds the {arch.timestep_rows} timestep embedding rows")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))


def load_checkpoint(path) -> Checkpoint:
    """Load and check a checkpoint folder (or its ``policy.json``).

    Raises:
        CheckpointError: missing or unreadable files, a digest mismatch (corrupt weights),
            unknown format, bad architecture/schema keys, missing/unexpected/misshapen
            tensors, or non-finite weights.
    """
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    p = Path(path)
    folder = p.parent if p.name == META_FILE else p
    meta_path = folder / META_FILE
    if not folder.exists():
        raise CheckpointError(f"{folder}: checkpoint not found")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: checkpoint has no {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not readable JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path}: format {got!r} is not one of {list(FORMATS)}")
    for key in ("architecture", "schema", "weights"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: missing key {key!r}")
    try:
        arch = HopArchitecture.from_dict(meta["architecture"])
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{meta_path}: key 'architecture': {exc}") from exc
    except CheckpointError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from exc
    try:
        schema = PolicySchema.from_dict(meta["schema"])
        schema.check(str(meta_path))
    except KeyError as exc:
        raise CheckpointError(f"{meta_path}: key 'schema.{exc.args[0]}' is missing") from exc
    except (TypeError, ValueError, AttributeError, PreprocessError) as exc:
        raise CheckpointError(f"{meta_path}: key 'schema': {exc}") from exc
    except SchemaMismatchError as exc:
        raise SchemaMismatchError(exc.args[0] if str(exc).startswith(str(meta_path)) else
                                  f"{meta_path}: key 'schema': {exc}") from exc
    if (meta["format"] == FORMAT_ACTION) != (schema.action is not None):
        raise CheckpointError(f"{meta_path}: format {meta['format']!r} but the schema "
                              f"{'has' if schema.action is not None else 'has no'} 'action' entry")
    _check_consistent(arch, schema, meta_path)
    weights, want = _file_entry(meta["weights"], "weights", folder, meta_path, WEIGHTS_FILE)
    onnx = meta.get("onnx") or {}
    if not isinstance(onnx, dict):
        raise CheckpointError(f"{meta_path}: key 'onnx' must be an object, not {type(onnx).__name__}")
    for part in ("encoder", "trunk"):
        if part in onnx:
            _file_entry(onnx[part], f"onnx.{part}", folder, meta_path)
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CheckpointError(f"{meta_path}: key 'provenance' must be an object, not {type(provenance).__name__}")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    digest = _sha256(weights)
    if digest != want:
        raise CheckpointError(f"{weights}: corrupt (sha256 {digest[:12]}... but {META_FILE} says {str(want)[:12]}...)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    check_state_dict(state, arch, str(weights))
    return Checkpoint(folder, arch, schema, state, digest, dict(provenance), dict(onnx))


def _file_entry(entry, key: str, folder: Path, meta_path: Path, default: str | None = None) -> tuple[Path, str]:
    """(path, sha256) of a ``{"file", "sha256"}`` entry of ``policy.json``. The file must be a
    relative path that stays inside ``folder`` and the digest 64 hex digits.

    Raises:
        CheckpointError: naming ``key`` and what is wrong.
    """
    if not isinstance(entry, dict):
        raise CheckpointError(f"{meta_path}: key {key!r} must be an object, not {type(entry).__name__}")
    name = entry.get("file", default)
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{meta_path}: key '{key}.file' must be a file name, not {name!r}")
    rel = Path(name)
    root = folder.resolve()
    if rel.is_absolute() or ".." in rel.parts or root not in (root / rel).resolve().parents:
        raise CheckpointError(f"{meta_path}: key '{key}.file' {name!r} must stay inside the checkpoint's folder")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(f"{meta_path}: key '{key}.sha256' must be the file's sha256 (64 hex digits), "
                              f"not {digest!r}")
    return folder / rel, digest


def check_state_dict(state: dict, arch: HopArchitecture, where: str) -> None:
    """Exactly the tensors ``arch`` needs, with the right shapes, all finite. Raises CheckpointError."""
    expected = {k: tuple(v.shape) for k, v in HopPolicy(arch).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not fit the architecture: missing {missing[:6]}"
                              f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                              f"{'...' if len(unexpected) > 6 else ''}")
    shapes = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in expected.items() if tuple(state[k].shape) != s]
    if shapes:
        raise CheckpointError(f"{where}: wrong weight shapes: " + "; ".join(shapes[:6]))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(f"{where}: non-finite weights (NaN or inf) in {nonfinite[:6]}")
