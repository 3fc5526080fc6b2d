"""The HOP network: a causal GPT-2 trunk over 16 steps of (proprio token, visual token).

Shapes (B batch, T <= history steps, D = hidden = 192):

- proprio: [B, T, 23] scaled to [-1, 1] -> ``embed_proprio`` -> [B, T, D]
- visual input per step -> tokenizer -> [B, T, D]; the tokenizer is either
  :class:`DepthTokenizer` (depth image [H, W]) or :class:`PointNetTokenizer`
  (points [P, 3], the public checkpoint's ``embed_pc``).
- a learned timestep embedding (rows = position in the window) is added to both tokens
  of a step; tokens interleave as p0, v0, p1, v1, ...; one LayerNorm; 4 GPT-2 blocks;
  final LayerNorm; the action head reads the output at each visual token.

Parameter names follow the public HOP state dict, except that the trunk's projections
are ``nn.Linear`` ([out, in]) where GPT-2 stores Conv1D ([in, out]); see
:mod:`policies.importer`.

The model is split so a runtime can cache per-frame visual embeddings:
:meth:`HopPolicy.encode_visual` runs once per frame, :meth:`HopPolicy.trunk` every step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policies.errors import CheckpointError


@dataclass(frozen=True)
class HopArchitecture:
    """Hyper-parameters of the network (the public checkpoint's are the defaults)."""

    hidden: int = 192
    layers: int = 4
    heads: int = 4
    inner: int = 768
    timestep_rows: int = 33
    proprio_dim: int = 23
    action_dim: int = 23
    ln_eps: float = 1e-5
    visual: str = "depth"                 # 'depth' | 'pointcloud'
    depth_channels: tuple[int, ...] = (16, 32, 64, 64)
    depth_size: tuple[int, int] = (60, 80)   # H, W of the depth input
    num_points: int = 100
    chunk: int = 1                        # targets predicted per step (the action head is action_dim x chunk)
    #: how many of the window's newest steps show their proprio to the network (0: every step, as
    #: HOP). The older steps keep their visual token and position but no joint values, so the motion
    #: so far cannot stand in for where the object is (see :meth:`HopPolicy._tokens`).
    proprio_steps: int = 0
    #: points enter the PointNet as (p - point_center) / point_scale (m, m): the twin's objects lie
    #: within +-0.1 m of each other, too little for a token that also carries the step's position
    #: embedding (identity by default, as HOP)
    point_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    point_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: the hand's view (:mod:`policies.hand_view`): for each k, the centre of the k cloud points
    #: nearest the palm, in the palm's frame, as rows appended to the points and embedded by
    #: ``embed_hand`` into the step's visual token (empty: none, as HOP)
    hand_view: tuple[int, ...] = ()

    @property
    def embedding_dim(self) -> int:
        """The size of one frame's embedding: the visual token [hidden] and the hand's view
        rows flattened [3 x len(hand_view)] (the rows are embedded in the trunk, so an encoder
        kept frozen still leaves them to training)."""
        return self.hidden + 3 * len(self.hand_view)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hand_view"] = list(self.hand_view)
        d["depth_channels"] = list(self.depth_channels)
        d["depth_size"] = list(self.depth_size)
        d["point_center"] = list(self.point_center)
        d["point_scale"] = list(self.point_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HopArchitecture":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"architecture has unknown keys {unknown}")
        d = dict(d)
        for k in ("depth_channels", "depth_size"):
            if k in d:
                d[k] = tuple(int(x) for x in d[k])
        for k in ("point_center", "point_scale"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
                if len(d[k]) != 3:
                    raise CheckpointError(f"architecture: {k} must have 3 values (x, y, z), got {len(d[k])}")
        if "hand_view" in d:
            d["hand_view"] = tuple(int(x) for x in d["hand_view"])
        arch = cls(**d)
        if arch.hidden % arch.heads:
            raise CheckpointError(f"architecture: hidden {arch.hidden} is not a multiple of heads {arch.heads}")
        if arch.chunk < 1:
            raise CheckpointError(f"architecture: chunk must be at least 1, got {arch.chunk}")
        if arch.proprio_steps < 0:
            raise CheckpointError(f"architecture: proprio_steps must be 0 (every step) or more, got {arch.proprio_steps}")
        if min(arch.point_scale) <= 0:
            raise CheckpointError(f"architecture: point_scale {list(arch.point_scale)} must be positive")
        if arch.visual not in ("depth", "pointcloud"):
            raise CheckpointError(f"architecture: visual must be 'depth' or 'pointcloud', not {arch.visual!r}")
        if arch.hand_view and (arch.visual != "pointcloud" or min(arch.hand_view) < 1
                               or max(arch.hand_view) > arch.num_points):
            raise CheckpointError(f"architecture: hand_view {list(arch.hand_view)} needs point-cloud input and "
                                  f"counts of points from 1 to num_points ({arch.num_points})")
        return arch


class DepthTokenizer(nn.Module):
    """Depth image [N, H, W] in [0, 1] -> token [N, D]: strided convs with ELU, then a linear map
    of the flattened feature map (keeps where things are in the image)."""

    def __init__(self, arch: HopArchitecture):
        super().__init__()
        layers, c_in = [], 1
        h, w = arch.depth_size
        for i, c in enumerate(arch.depth_channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), nn.ELU()]
            c_in = c
            h, w = (h + 1) // 2, (w + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * h * w, arch.hidden)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        x = self.convs(depth.unsqueeze(1))
        return self.proj(x.flatten(1))


class PointNetTokenizer(nn.Sequential):
    """Points [N, P, 3] (m) -> token [N, D]: the points standardised by the architecture's
    ``point_center`` and ``point_scale``, a per-point MLP 3 -> D -> D -> D with ELU, max over points."""

    def __init__(self, arch: HopArchitecture):
        d = arch.hidden
        super().__init__(nn.Linear(3, d), nn.ELU(), nn.Linear(d, d), nn.ELU(), nn.Linear(d, d))
        self.standardise = tuple(arch.point_center) != (0.0, 0.0, 0.0) or tuple(arch.point_scale) != (1.0, 1.0, 1.0)
        # constants of the architecture, not weights: not in the state dict (HOP's key set stays)
        self.register_buffer("center", torch.tensor(arch.point_center, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(arch.point_scale, dtype=torch.float32), persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            points = (points - self.center) / self.scale
        return super().forward(points).amax(dim=1)


class CausalSelfAttention(nn.Module):
    def __init__(self, arch: HopArchitecture):
        super().__init__()
        self.heads = arch.heads
        self.c_attn = nn.Linear(arch.hidden, 3 * arch.hidden)
        self.c_proj = nn.Linear(arch.hidden, arch.hidden)
        n = 2 * arch.timestep_rows
        self.register_buffer("mask", torch.tril(torch.ones(n, n, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]; with ``last_only``, the output at the last token only, [B, 1, D]
        (the last token attends to every token, so no mask is needed)."""
        b, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        hd = d // self.heads
        if last_only:
            q = q[:, -1:]
        m = q.shape[1]
        q = q.reshape(b, m, self.heads, hd).transpose(1, 2)
        k, v = (t.reshape(b, n, self.heads, hd).transpose(1, 2) for t in (k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        if not last_only:
            att = att.masked_fill(~self.mask[:n, :n], float("-inf"))
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, m, d)
        return self.c_proj(y)


class Mlp(nn.Module):
    def __init__(self, arch: HopArchitecture):
        super().__init__()
        self.c_fc = nn.Linear(arch.hidden, arch.inner)
        self.c_proj = nn.Linear(arch.inner, arch.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))   # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, arch: HopArchitecture):
        super().__init__()
        self.ln_1 = nn.LayerNorm(arch.hidden, eps=arch.ln_eps)
        self.attn = CausalSelfAttention(arch)
        self.ln_2 = nn.LayerNorm(arch.hidden, eps=arch.ln_eps)
        self.mlp = Mlp(arch)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        h = self.attn(self.ln_1(x), last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    def __init__(self, arch: HopArchitecture):
        super().__init__()
        self.h = nn.ModuleList(Block(arch) for _ in range(arch.layers))
        self.ln_f = nn.LayerNorm(arch.hidden, eps=arch.ln_eps)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """With ``last_only`` the final block computes the last token's output only ([B, 1, D]):
        exact, since nothing after it reads the other tokens."""
        for i, block in enumerate(self.h):
            x = block(x, last_only and i == len(self.h) - 1)
        return self.ln_f(x)


def hand_view_embedding(arch: HopArchitecture) -> nn.Sequential:
    """The hand's view rows flattened [..., 3R] -> [..., D]: a small MLP whose output layer starts
    at zero, so a network given a hand's view starts as the one it was without (a prior finetuned
    with one begins from the prior's own behaviour)."""
    width = 64
    out = nn.Linear(width, arch.hidden)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.Linear(3 * len(arch.hand_view), width), nn.ELU(), out)


class HopPolicy(nn.Module):
    """The HOP policy network (see the module docstring for shapes)."""

    def __init__(self, arch: HopArchitecture | None = None):
        super().__init__()
        arch = arch or HopArchitecture()
        self.arch = arch
        self.embed_timestep = nn.Embedding(arch.timestep_rows, arch.hidden)
        # GPT-2's initialisation of its position table (torch's default, N(0, 1), makes the position
        # of a step 50 times larger than what a fresh tokenizer says about the scene: measured on
        # twin point clouds, the spread between demos' visual tokens was 2-4% of the token)
        nn.init.normal_(self.embed_timestep.weight, std=0.02)
        self.embed_proprio = nn.Linear(arch.proprio_dim, arch.hidden)
        if arch.visual == "pointcloud":
            self.embed_pc = PointNetTokenizer(arch)
        else:
            self.embed_depth = DepthTokenizer(arch)
        self.embed_ln = nn.LayerNorm(arch.hidden, eps=arch.ln_eps)
        self.transformer = Trunk(arch)
        self.predict_action = nn.Sequential(nn.Linear(arch.hidden, arch.action_dim * arch.chunk))
        self.predict_proprio = nn.Sequential(nn.Linear(arch.hidden, arch.proprio_dim))
        if arch.hand_view:
            self.embed_hand = hand_view_embedding(arch)

    @property
    def tokenizer(self) -> nn.Module:
        return self.embed_pc if self.arch.visual == "pointcloud" else self.embed_depth

    def encode_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """One embedding per frame: [N, H, W] depth or [N, P, 3] points -> [N, D]; with a hand's view
        the points are followed by its R rows ([N, P + R, 3]) and the embedding is the token and
        the rows flattened, [N, D + 3R] (``arch.embedding_dim``)."""
        r = len(self.arch.hand_view)
        if not r:
            return self.tokenizer(visual)
        p = visual.shape[1] - r
        return torch.cat([self.tokenizer(visual[:, :p]), visual[:, p:].flatten(1)], dim=1)

    def visual_token(self, visual_emb: torch.Tensor) -> torch.Tensor:
        """Frame embeddings [..., embedding_dim] -> the steps' visual tokens [..., D] (the hand's
        view, if any, embedded and added to the scene's token)."""
        if not self.arch.hand_view:
            return visual_emb
        d = self.arch.hidden
        return visual_emb[..., :d] + self.embed_hand(visual_emb[..., d:])

    def _tokens(self, proprio: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        """The interleaved, normalised tokens [B, 2T, D]. With ``arch.proprio_steps`` = k > 0 only the
        newest k proprio tokens carry joint values; the older ones are their position alone.

        Why k: a policy that sees the last 16 postures can copy the motion under way instead of
        reading the object's place from the scene. On twin grasp & drop demos that copying was what
        the policies did while their visual token was drowned by the position table (see
        :class:`PointNetTokenizer`); with the scene standardised, k = 1 did not do better than
        every step shown, so the default is HOP's (0).
        """
        b, t, _ = proprio.shape
        pos = self.embed_timestep(torch.arange(t, device=proprio.device))
        p = self.embed_proprio(proprio)
        k = self.arch.proprio_steps
        if 0 < k < t:
            shown = (torch.arange(t, device=proprio.device) >= t - k).to(p.dtype)
            p = p * shown[None, :, None]
        p = p + pos
        v = self.visual_token(visual_emb) + pos
        return self.embed_ln(torch.stack([p, v], dim=2).reshape(b, 2 * t, -1))

    def trunk(self, proprio: torch.Tensor, visual_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proprio [B, T, 23] (scaled), visual_emb [B, T, D] -> (actions [B, T, 23 x chunk], next proprio [B, T, 23]);
        a step's actions are its chunk's rows one after the other."""
        x = self.transformer(self._tokens(proprio, visual_emb))
        out_v = x[:, 1::2]
        return self.predict_action(out_v), self.predict_proprio(out_v)

    def forward(self, proprio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """proprio [B, T, 23], visual [B, T, ...] -> (actions, next proprio), each [B, T, 23]."""
        b, t = proprio.shape[:2]
        emb = self.encode_visual(visual.reshape(b * t, *visual.shape[2:])).reshape(b, t, -1)
        return self.trunk(proprio, emb)

    def act(self, proprio: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        """The action for now: the prediction at the last step (the window's last visual token),
        [B, 23 x chunk] (normalised). Equal to ``trunk(...)[0][:, -1]``; the last block computes that token only."""
        x = self.transformer(self._tokens(proprio, visual_emb), last_only=True)
        return self.predict_action(x[:, -1])
