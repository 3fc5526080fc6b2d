"""Import a checkpoint in the public HOP layout (a torch state dict) into this project's format.

The public state dict names its tensors as :mod:`policies.hop` does, with two
differences handled here: the trunk's projections (``attn.c_attn``, ``attn.c_proj``,
``mlp.c_fc``, ``mlp.c_proj``) are GPT-2 "Conv1D" weights stored as [in, out], the
transpose of ``nn.Linear``; and the trunk carries the causal-mask buffers ``attn.bias`` and
``attn.masked_bias``, which are not weights and are dropped. The architecture is read off
the tensor shapes (only the head count cannot be, and is an argument).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from policies.checkpoint import check_state_dict, save_checkpoint
from policies.errors import CheckpointError
from policies.hop import HopArchitecture, HopPolicy
from policies.schema import HOP_HAND_FINGERS, PolicySchema
from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualSpec

#: Trunk weights stored [in, out] in the public layout.
CONV1D = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
#: Buffers of the public trunk that are not weights.
BUFFERS = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def architecture_of(state: dict, heads: int = 4) -> HopArchitecture:
    """Read the architecture off a public HOP state dict's shapes."""
    try:
        rows, hidden = state["embed_timestep.weight"].shape
        proprio_dim = state["embed_proprio.weight"].shape[1]
        action_dim = state["predict_action.0.weight"].shape[0]
        inner = state["transformer.h.0.mlp.c_fc.weight"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"not a HOP state dict: no tensor {exc.args[0]!r}") from exc
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"^transformer\.h\.(\d+)\.", k))})
    visual = "pointcloud" if "embed_pc.0.weight" in state else "depth"
    if visual != "pointcloud":
        raise CheckpointError("not a public HOP state dict: no point-cloud encoder 'embed_pc.0.weight'")
    return HopArchitecture(hidden=int(hidden), layers=layers, heads=heads, inner=int(inner), timestep_rows=int(rows),
                           proprio_dim=int(proprio_dim), action_dim=int(action_dim), visual=visual)


def convert_state_dict(public: dict, heads: int = 4) -> tuple[HopArchitecture, dict]:
    """Public HOP tensors -> (architecture, this project's state dict). Raises CheckpointError."""
    arch = architecture_of(public, heads)
    out = {}
    for k, v in public.items():
        if BUFFERS.match(k):
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().to("cpu", torch.float32)
        out[k] = v.t().contiguous() if CONV1D.match(k) else v.contiguous()
    check_state_dict(out, arch, "public HOP state dict")
    return arch, out


def load_public_state_dict(path) -> dict:
    """A public HOP ``.pt``/``.pth`` file: a state dict, or a dict holding one under 'model' or 'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {exc}") from exc
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def import_hop(public: dict, fingers=HOP_HAND_FINGERS, heads: int = 4,
               points: PointCloudPreprocess | None = None) -> tuple[HopPolicy, PolicySchema]:
    """The network and schema for a public HOP state dict. ``fingers``: the Allegro finger filling
    each of HOP's four hand slots (finger A, thumb, finger B, finger C)."""
    arch, state = convert_state_dict(public, heads)
    points = points or PointCloudPreprocess(num_points=arch.num_points)
    model = HopPolicy(arch)
    model.load_state_dict(state, strict=True)
    schema = PolicySchema.hop(VisualSpec("pointcloud", points=points), fingers=fingers)
    return model.eval(), schema


def import_hop_file(src, dst, fingers=HOP_HAND_FINGERS, heads: int = 4) -> Path:
    """Convert a public HOP checkpoint file ``src`` into a checkpoint folder ``dst``."""
    model, schema = import_hop(load_public_state_dict(src), fingers, heads)
    return save_checkpoint(dst, model, schema, {"source": "imported from a public HOP checkpoint",
                                                "imported_from": Path(src).name,
                                                "hand_order": list(fingers)})
