"""Checkpoints and public-layout state dicts for policy tests (random weights, real files)."""
from __future__ import annotations

import numpy as np
import torch

from policies.checkpoint import save_checkpoint
from policies.hop import HopArchitecture, HopPolicy
from policies.schema import PolicySchema
from robot_runtime.perception.preprocess import DepthPreprocess, VisualSpec

SMALL_DEPTH = DepthPreprocess(near=0.3, far=1.6, height=24, width=32)


def depth_checkpoint(folder, seed: int = 0, depth: DepthPreprocess = SMALL_DEPTH, arch_kw=None, schema=None,
                     onnx: bool = True):
    """A depth-input HOP checkpoint with random weights (full-size trunk unless ``arch_kw`` says otherwise)."""
    torch.manual_seed(seed)
    arch = HopArchitecture(visual="depth", depth_size=depth.shape, **(arch_kw or {}))
    model = HopPolicy(arch)
    schema = schema or PolicySchema.hop(VisualSpec("depth", depth=depth))
    return save_checkpoint(folder, model, schema, {"source": "test", "seed": seed}, onnx=onnx)


def public_hop_state_dict(seed: int = 0, layers: int = 4, hidden: int = 192, inner: int = 768) -> dict:
    """Random tensors with exactly the public HOP checkpoint's names and shapes (Conv1D weights [in, out])."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {"embed_timestep.weight": r(33, hidden), "embed_proprio.weight": r(hidden, 23), "embed_proprio.bias": r(hidden),
          "embed_pc.0.weight": r(hidden, 3, scale=0.5), "embed_pc.0.bias": r(hidden),
          "embed_pc.2.weight": r(hidden, hidden), "embed_pc.2.bias": r(hidden),
          "embed_pc.4.weight": r(hidden, hidden), "embed_pc.4.bias": r(hidden),
          "embed_ln.weight": 1 + r(hidden), "embed_ln.bias": r(hidden),
          "predict_action.0.weight": r(23, hidden), "predict_action.0.bias": r(23),
          "predict_proprio.0.weight": r(23, hidden), "predict_proprio.0.bias": r(23),
          "transformer.ln_f.weight": 1 + r(hidden), "transformer.ln_f.bias": r(hidden)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": 1 + r(hidden), p + "ln_1.bias": r(hidden),
                   p + "ln_2.weight": 1 + r(hidden), p + "ln_2.bias": r(hidden),
                   p + "attn.c_attn.weight": r(hidden, 3 * hidden), p + "attn.c_attn.bias": r(3 * hidden),
                   p + "attn.c_proj.weight": r(hidden, hidden), p + "attn.c_proj.bias": r(hidden),
                   p + "mlp.c_fc.weight": r(hidden, inner), p + "mlp.c_fc.bias": r(inner),
                   p + "mlp.c_proj.weight": r(inner, hidden), p + "mlp.c_proj.bias": r(hidden),
                   p + "attn.bias": torch.tril(torch.ones(1, 1, 1024, 1024, dtype=torch.bool)),
                   p + "attn.masked_bias": torch.tensor(-1e4)})
    return sd


def reference_forward(sd: dict, proprio: np.ndarray, points: np.ndarray, heads: int = 4) -> np.ndarray:
    """Actions [T, 23] from a public-layout state dict, computed in float64 numpy from the spec alone.

    proprio [T, 23] (scaled), points [T, P, 3].
    """
    w = {k: v.double().numpy() for k, v in sd.items() if v.is_floating_point()}

    def lin(x, name):             # torch Linear: [out, in]
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    def conv1d(x, name):          # GPT-2 Conv1D: [in, out]
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def ln(x, name, eps=1e-5):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def elu(x):
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    T = len(proprio)
    pc = lin(elu(lin(elu(lin(points.astype(np.float64), "embed_pc.0")), "embed_pc.2")), "embed_pc.4").max(axis=1)
    te = w["embed_timestep.weight"][:T]
    tokens = []
    for t in range(T):
        tokens.append(lin(proprio[t].astype(np.float64), "embed_proprio") + te[t])
        tokens.append(pc[t] + te[t])
    x = ln(np.stack(tokens), "embed_ln")
    n, d = x.shape
    hd = d // heads
    layers = len({k.split(".")[2] for k in w if k.startswith("transformer.h.")})
    for i in range(layers):
        p = f"transformer.h.{i}."
        qkv = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = np.split(qkv, 3, axis=-1)
        out = np.zeros_like(x)
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            s = q[:, sl] @ k[:, sl].T / np.sqrt(hd)
            s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, sl] = (s / s.sum(-1, keepdims=True)) @ v[:, sl]
        x = x + conv1d(out, p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return lin(x[1::2], "predict_action.0")
