"""Inference runners: the same two calls on torch or on ONNX Runtime.

- :meth:`PolicyRunner.encode`: one frame's visual input -> its embedding [D] (once per frame).
- :meth:`PolicyRunner.act`: the window's proprio [T, 23] (scaled) and embeddings [T, D] ->
  the action for now [23] (scaled). The 32-token trunk is recomputed every step.

ONNX export uses a fixed opset and fixed shapes (batch 1, a full window: the runtime
pads the window, so nothing is dynamic). A checkpoint carries its exported files (see
:mod:`policies.checkpoint`); one that does not is exported on load, into a cache keyed by
the weights' digest, so loading it twice exports once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policies.checkpoint import Checkpoint
from policies.errors import PolicyError
from policies.hop import HopPolicy

OPSET = 17
#: Bumped whenever the exported graph changes (cached and shipped ONNX files of another
#: version are exported again).
EXPORT_VERSION = 2
RUNNERS = ("onnxruntime", "torch")


class PolicyRunner(ABC):
    """Runs one checkpoint's network."""

    kind = ""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.history = checkpoint.schema.history
        self.visual_shape = checkpoint.schema.visual.shape

    @abstractmethod
    def encode(self, visual: np.ndarray) -> np.ndarray:
        """One frame's visual input (float32, ``visual_shape``) -> embedding [D] float32."""

    @abstractmethod
    def act(self, proprio: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """proprio [T, 23] float32 (scaled), emb [T, D] float32 -> action for now [23] float32 (scaled)."""

    def warm_up(self, steps: int) -> None:
        """Run ``steps`` encode+act calls on zeros (first calls allocate and plan)."""
        z = np.zeros(self.visual_shape, np.float32)
        p = np.zeros((self.history, self.checkpoint.arch.proprio_dim), np.float32)
        for _ in range(steps):
            e = self.encode(z)
            self.act(p, np.repeat(e[None], self.history, 0))


class TorchRunner(PolicyRunner):
    """Eager torch on the CPU, no autograd."""

    kind = "torch"

    def __init__(self, checkpoint: Checkpoint, model: HopPolicy | None = None):
        super().__init__(checkpoint)
        self.model = model if model is not None else checkpoint.build_model()

    def encode(self, visual: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model.encode_visual(torch.from_numpy(np.asarray(visual, np.float32))[None])[0].numpy()

    def act(self, proprio: np.ndarray, emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            p = torch.from_numpy(np.asarray(proprio, np.float32))[None]
            e = torch.from_numpy(np.asarray(emb, np.float32))[None]
            return self.model.act(p, e)[0].numpy()


class _Encoder(nn.Module):
    def __init__(self, model: HopPolicy):
        super().__init__()
        self.model = model

    def forward(self, visual):
        return self.model.encode_visual(visual)


class _Act(nn.Module):
    def __init__(self, model: HopPolicy):
        super().__init__()
        self.model = model

    def forward(self, proprio, emb):
        return self.model.act(proprio, emb)


def cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$ROBOT_RUNTIME_CACHE`` or ``~/.cache/robot_runtime``."""
    root = os.environ.get("ROBOT_RUNTIME_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "robot_runtime")
    return Path(root) / "onnx"


def export_folder(checkpoint: Checkpoint) -> Path:
    """The cache folder of ``checkpoint``'s exported files."""
    return cache_dir() / f"{checkpoint.sha256[:16]}-T{checkpoint.schema.history}-op{OPSET}-v{EXPORT_VERSION}"


def export_onnx(checkpoint: Checkpoint, folder: Path | None = None, model: HopPolicy | None = None,
                in_subprocess: bool = False) -> tuple[Path, Path]:
    """Export the encoder and the trunk (fixed shapes, opset :data:`OPSET`); returns their paths.

    Files are written under ``folder`` (default: the cache, keyed by the weights' digest)
    and reused when present. ``in_subprocess``: export in a child process. The exporter
    holds the GIL for tens of milliseconds at a time, which would delay a control loop
    running in this process (a hot-swap exports while the policy loop runs).
    """
    folder = Path(folder) if folder else export_folder(checkpoint)
    enc, act = folder / "encoder.onnx", folder / "trunk.onnx"
    if enc.is_file() and act.is_file():
        return enc, act
    if in_subprocess:
        proc = subprocess.run([sys.executable, "-m", "policies.runners", str(checkpoint.path), str(folder)],
                              capture_output=True, text=True, timeout=300, preexec_fn=_lowest_priority)
        if proc.returncode != 0 or not (enc.is_file() and act.is_file()):
            raise PolicyError(f"{checkpoint.path}: ONNX export failed: {(proc.stderr or proc.stdout)[-800:]}")
        return enc, act
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else checkpoint.build_model()
    t, d = checkpoint.schema.history, checkpoint.arch.hidden
    visual = torch.zeros((1, *checkpoint.schema.visual.shape))
    proprio, emb = torch.zeros((1, t, checkpoint.arch.proprio_dim)), torch.zeros((1, t, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        for module, args, names, out, path in (
                (_Encoder(model), (visual,), ["visual"], ["embedding"], enc),
                (_Act(model), (proprio, emb), ["proprio", "visual_emb"], ["action"], act)):
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.onnx.export(module.eval(), args, str(tmp), opset_version=OPSET, input_names=names,
                              output_names=out, dynamo=False, do_constant_folding=True)
            os.replace(tmp, path)
    return enc, act


def _lowest_priority() -> None:
    """In the export child: run only on otherwise idle CPU, so the robot's processes keep theirs."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


class OnnxRunner(PolicyRunner):
    """ONNX Runtime on the CPU: one intra-op thread, no spinning (the control loops own the cores)."""

    kind = "onnxruntime"

    def __init__(self, checkpoint: Checkpoint, model: HopPolicy | None = None, folder: Path | None = None,
                 export_in_subprocess: bool = False):
        super().__init__(checkpoint)
        import onnxruntime as ort  # noqa: PLC0415

        own = None if folder is not None else checkpoint.onnx_files(OPSET, EXPORT_VERSION)
        enc, act = own or export_onnx(checkpoint, folder, model, in_subprocess=export_in_subprocess)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.enc = ort.InferenceSession(str(enc), opts, providers=["CPUExecutionProvider"])
            self.trunk = ort.InferenceSession(str(act), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise PolicyError(f"onnxruntime could not load {enc.parent}: {exc}") from exc

    def encode(self, visual: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(visual, np.float32)[None]
        return self.enc.run(None, {"visual": v})[0][0]

    def act(self, proprio: np.ndarray, emb: np.ndarray) -> np.ndarray:
        feeds = {"proprio": np.ascontiguousarray(proprio, np.float32)[None],
                 "visual_emb": np.ascontiguousarray(emb, np.float32)[None]}
        return self.trunk.run(None, feeds)[0][0]


def make_runner(kind: str, checkpoint: Checkpoint, export_in_subprocess: bool = False) -> PolicyRunner:
    """A runner of ``kind`` ('onnxruntime' or 'torch') for ``checkpoint``."""
    model = checkpoint.build_model()
    if kind == "torch":
        return TorchRunner(checkpoint, model)
    if kind == "onnxruntime":
        return OnnxRunner(checkpoint, model, export_in_subprocess=export_in_subprocess)
    raise PolicyError(f"unknown runner {kind!r} (one of {', '.join(RUNNERS)})")


def main(argv=None) -> int:
    """``python -m policies.runners CHECKPOINT OUT_FOLDER``: export a checkpoint's ONNX files."""
    from policies.checkpoint import load_checkpoint  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m policies.runners CHECKPOINT OUT_FOLDER", file=sys.stderr)
        return 2
    export_onnx(load_checkpoint(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
