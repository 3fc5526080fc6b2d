"""ONNX export of a checkpoint's network: the visual encoder and the trunk, as two files.

The export uses a fixed opset (:data:`OPSET`) and fixed shapes (batch 1, a full window: the
runtime pads the window, so nothing is dynamic). Files go to a folder of the caller's, or to a
cache keyed by the weights' digest (:func:`export_folder`), so a checkpoint is exported once.
``python -m policies.onnx_export CHECKPOINT OUT_FOLDER`` exports in a child process (what a
hot-swap uses, so the exporter never holds the policy loop's GIL).
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from policies.errors import PolicyError
from policies.hop import HopPolicy

if TYPE_CHECKING:   # the checkpoint module imports this one, to export on save
    from policies.checkpoint import Checkpoint

#: 20: GPT-2's tanh GELU exports as one ``Gelu`` node (ONNX Runtime runs it as one kernel; at 17 it
#: was 8 elementwise nodes per layer, and the trunk took 8% longer).
OPSET = 20
#: Bumped whenever the exported graph changes (cached and shipped ONNX files of another
#: version are exported again).
EXPORT_VERSION = 2
#: The longest an export in a child process may take (s).
EXPORT_TIMEOUT_S = 300.0


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


def network_visual_shape(checkpoint: Checkpoint) -> tuple[int, ...]:
    """The shape of one frame's input to the network: the schema's visual input, and with a
    hand's view (:mod:`policies.hand_view`) its rows after the points."""
    shape = tuple(checkpoint.schema.visual.shape)
    rows = len(checkpoint.arch.hand_view)
    return (shape[0] + rows, *shape[1:]) if rows else shape


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
        try:
            proc = subprocess.run([sys.executable, "-m", "policies.onnx_export", str(checkpoint.path), str(folder)],
                                  capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S,
                                  preexec_fn=_lowest_priority)
        except subprocess.TimeoutExpired as exc:
            raise PolicyError(f"{checkpoint.path}: ONNX export took more than {EXPORT_TIMEOUT_S:g} s") from exc
        except OSError as exc:
            raise PolicyError(f"{checkpoint.path}: ONNX export could not start: {exc}") from exc
        if proc.returncode != 0 or not (enc.is_file() and act.is_file()):
            raise PolicyError(f"{checkpoint.path}: ONNX export failed: {(proc.stderr or proc.stdout)[-800:]}")
        return enc, act
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else checkpoint.build_model()
    t, d = checkpoint.schema.history, checkpoint.arch.embedding_dim
    visual = torch.zeros((1, *network_visual_shape(checkpoint)))
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


def main(argv=None) -> int:
    """``python -m policies.onnx_export CHECKPOINT OUT_FOLDER``: export a checkpoint's ONNX files."""
    from policies.checkpoint import load_checkpoint  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m policies.onnx_export CHECKPOINT OUT_FOLDER", file=sys.stderr)
        return 2
    export_onnx(load_checkpoint(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
