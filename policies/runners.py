"""Inference runners: the same two calls on torch or on ONNX Runtime.

- :meth:`PolicyRunner.encode`: one frame's visual input -> its embedding [D] (once per frame).
- :meth:`PolicyRunner.act`: the window's proprio [T, 23] (scaled) and embeddings [T, D] ->
  the action for now [23] (scaled). The 32-token trunk is recomputed every step.

A checkpoint carries its exported ONNX files (see :mod:`policies.checkpoint`); one that does
not is exported on load (:mod:`policies.onnx_export`), into a cache keyed by the weights'
digest, so loading it twice exports once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from policies.checkpoint import Checkpoint
from policies.errors import PolicyError
from policies.hop import HopPolicy
from policies.onnx_export import EXPORT_VERSION, OPSET, export_onnx, network_visual_shape

RUNNERS = ("onnxruntime", "torch")


class PolicyRunner(ABC):
    """Runs one checkpoint's network."""

    kind = ""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.history = checkpoint.schema.history
        self.visual_shape = network_visual_shape(checkpoint)

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
