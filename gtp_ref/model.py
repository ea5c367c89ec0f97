"""GTPViT: a pre-norm ViT with GTP between attention and MLP of every block (spec section 3).

Module names and parameter shapes are those of timm's ``VisionTransformer`` of the same
geometry, so ``load_state_dict`` takes timm / DeiT checkpoints unchanged (timm not needed).
The GTP ops come from the backend module (``gtp_ref.dense``); this file only wires them in.
"""
import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

from gtp_ref._checks import (BACKENDS, GLOBAL_POOLS, GRAPHS, PROPAGATIONS, SELECTIONS, check_alpha,
                             check_num_neighbours, check_sparsity, choice)
from gtp_ref.margins import attention_margin, selection_margin, semantic_margin
from gtp_ref.select import sparsity_k

LN_EPS = 1e-6  # the DeiT / ViT factories' LayerNorm eps


def _pair(v, name):
    v = (v, v) if isinstance(v, int) else tuple(v)
    if len(v) != 2 or any(isinstance(a, bool) or not isinstance(a, int) or a < 1 for a in v):
        raise ValueError(f"{name}={v!r} must be a positive int or a pair of positive ints")
    return v


class PatchEmbed(nn.Module):
    """[B, in_chans, H, W] -> [B, n, C], n = (H/p) (W/p), row-major over the patch grid."""

    def __init__(self, in_chans, embed_dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, n, C)


class Attention(nn.Module):
    """Multi-head attention with proportional attention and attention sparsity.

    Att = softmax(q k^T / sqrt(d_h) + log s) (log s only with token sizes), then sparsified
    (spec 3.2).  Returns the output [B, N, C], the sparsified map and the map before sparsity
    (both [B, H, N, N]; the latter only for ``margins``).
    """

    def __init__(self, dim, num_heads, qkv_bias, sparsity, ops):
        super().__init__()
        self.num_heads, self.sparsity, self.ops = num_heads, sparsity, ops
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, token_scales=None):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d)
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        if token_scales is not None:
            logits = logits + token_scales.log()[:, None, None, :]  # + log s per key column
        raw = logits.softmax(dim=-1)  # (B, H, N, N)
        attn = self.ops.sparsify_attention(raw, self.sparsity)  # (B, H, N, N)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(out), attn, raw


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class LayerTrace:
    """What one block did: tokens entering it, the sparsity k, the scores and the selection."""

    tokens: int
    attn_k: int | None
    scores: torch.Tensor | None = None  # (B, n_l)
    kept: torch.Tensor | None = None  # (B, n_l - P)
    prop: torch.Tensor | None = None  # (B, P)
    margins: dict = field(default_factory=dict)  # only with forward_trace(..., margins=True)


@dataclass
class GTPTrace:
    """A forward pass: the logits, one LayerTrace per block, the token count at the end."""

    logits: torch.Tensor | None = None
    layers: list = field(default_factory=list)
    final_tokens: int = 0
    semantic_margin: float = float("inf")

    def min_margin(self):
        """The closest call of the whole pass (see ``gtp_ref.margins``); needs margins=True."""
        return min([self.semantic_margin] + [m for t in self.layers for m in t.margins.values()])

    @property
    def tokens_per_layer(self):
        """Token count after each block ([CLS] included), as in the conformance vectors."""
        return [t.tokens for t in self.layers[1:]] + [self.final_tokens]

    @property
    def attn_k_per_layer(self):
        return [t.attn_k for t in self.layers if t.attn_k is not None]


class Block(nn.Module):
    """Pre-norm block: x <- x + Attn(LN1 x), [GTP reduction], x <- x + MLP(LN2 x).

    The reduction sits between the two halves, so GTPViT.forward_trace calls them in turn.
    """

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, sparsity, ops):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, sparsity, ops)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x, token_scales=None):
        """x + Attn(LN1 x), the sparsified attention map [B, H, N, N] and the map before it."""
        out, attn, raw = self.attn(self.norm1(x), token_scales)
        return x + out, attn, raw

    def feed_forward(self, x):
        return x + self.mlp(self.norm2(x))


class GTPViT(nn.Module):
    """A ViT with Graph-based Token Propagation.  Input [B, in_chans, H, W] -> logits [B, classes].

    num_prop: tokens propagated per block (an int, or one int per block); 0 disables GTP there.
    graph / num_neighbours: the token graph (spec 2); selection: the score (spec 3.4);
    propagation: "graph" (GTP), "mean" or "none"; sparsity: theta in (0, 1]; alpha: the
    propagation weight; token_scale: proportional attention with token sizes.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, class_token=True,
                 global_pool="token", num_prop=0, graph="mixed", num_neighbours=4,
                 selection="mixed_attn_max", propagation="graph", sparsity=1.0, alpha=0.1,
                 token_scale=False, backend="dense"):
        super().__init__()
        choice("graph", graph, GRAPHS)
        choice("selection", selection, SELECTIONS)
        choice("propagation", propagation, PROPAGATIONS)
        choice("global_pool", global_pool, GLOBAL_POOLS)
        choice("backend", backend, BACKENDS)
        check_sparsity(sparsity)
        check_alpha(alpha)
        if token_scale and propagation == "graph" and alpha < 0:
            raise ValueError(f"alpha={alpha!r} must be >= 0 with token_scale=True: sizes "
                             "s_K + alpha Â[K, P] s_P must stay positive for log s")
        img_size, patch_size = _pair(img_size, "img_size"), _pair(patch_size, "patch_size")
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"patch_size={patch_size!r} must be square (timm's PatchEmbed)")
        if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
            raise ValueError(f"img_size={img_size!r} is not divisible by patch_size={patch_size[0]}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if not class_token and global_pool == "token":
            raise ValueError("global_pool='token' needs a [CLS] token (class_token=True); "
                             "use global_pool='avg'")
        if not class_token and selection.startswith("cls_attn"):
            raise ValueError(f"selection={selection!r} needs a [CLS] token (class_token=True)")

        self.grid = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.img_size, self.in_chans = img_size, in_chans
        n = self.grid[0] * self.grid[1]
        if isinstance(num_neighbours, bool) or not isinstance(num_neighbours, int) or num_neighbours < 0:
            raise ValueError(f"num_neighbours={num_neighbours!r} must be an integer >= 0")
        if graph in ("semantic", "mixed"):
            check_num_neighbours(num_neighbours, n)
        self.num_prop = self._schedule(num_prop, depth, n, propagation)

        self.class_token, self.global_pool = class_token, global_pool
        self.graph, self.num_neighbours, self.selection = graph, num_neighbours, selection
        self.propagation, self.sparsity, self.alpha = propagation, sparsity, float(alpha)
        self.token_scale, self.backend = token_scale, backend
        self.ops = importlib.import_module(f"gtp_ref.{backend}")

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size[0])
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + int(class_token), embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, sparsity, self.ops) for _ in range(depth))
        if global_pool == "avg":
            self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _schedule(num_prop, depth, n, propagation):
        """num_prop as one int per block; every block must keep at least one image token."""
        if isinstance(num_prop, (list, tuple)):
            if len(num_prop) != depth:
                raise ValueError(f"num_prop has {len(num_prop)} entries; need one per block "
                                 f"(depth={depth})")
            schedule = list(num_prop)
        else:
            schedule = [num_prop] * depth
        for P in schedule:
            if isinstance(P, bool) or not isinstance(P, int) or P < 0:
                raise ValueError(f"num_prop={num_prop!r}: every entry must be an integer >= 0")
        n_l = n
        for l, P in enumerate(schedule):
            if P > n_l - 1:
                raise ValueError(
                    f"num_prop={num_prop!r} propagates {P} of the {n_l} image tokens left at block {l}; "
                    f"at most {n_l - 1} (at least one image token must be kept)")
            n_l = n_l - P + (1 if propagation == "mean" and P > 0 else 0)
        return schedule

    # ---- forward ---------------------------------------------------------------------------
    def _check_input(self, x):
        want = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, want))}], "
                             f"got {list(x.shape)}")

    def _embed(self, x):
        x = self.patch_embed(x)  # (B, n, C)
        if self.class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        return x + self.pos_embed

    def forward_trace(self, x, generator=None, margins=False):
        """Logits and, per block, the tokens entering it, the sparsity k and the selection.

        ``margins=True`` also records how close every discrete decision came to flipping
        (``gtp_ref.margins``): where two implementations may legitimately disagree by rounding.
        """
        self._check_input(x)
        ops, c = self.ops, int(self.class_token)
        x = self._embed(x)  # (B, N, C)
        G, trace_semantic = None, float("inf")
        if self.propagation == "graph" and any(self.num_prop):
            G = ops.token_graph(x[:, c:], self.grid, self.graph, self.num_neighbours)
            if margins and self.graph != "spatial":
                trace_semantic = semantic_margin(x[:, c:], self.num_neighbours)
        token_scales = x.new_ones(x.shape[:2]) if self.token_scale else None  # (B, N)
        trace = GTPTrace(semantic_margin=trace_semantic)
        for block, P in zip(self.blocks, self.num_prop):
            N_l = x.shape[1]
            layer = LayerTrace(tokens=N_l, attn_k=sparsity_k(N_l, self.sparsity) if self.sparsity < 1 else None)
            x, attn, raw = block.attend(x, token_scales)  # (B, N_l, C), (B, H, N_l, N_l) x 2
            if margins:
                layer.margins["attn"] = attention_margin(raw, self.sparsity)
            if P > 0:
                layer.scores = ops.token_scores(attn, self.selection, self.class_token, generator)
                layer.kept, layer.prop = ops.select_tokens(layer.scores, P)
                if margins:
                    layer.margins["selection"] = selection_margin(layer.scores, layer.kept, layer.prop)
                x, G, token_scales = ops.propagate(x, G, layer.kept, layer.prop, self.alpha,
                                                   token_scales, self.class_token, self.propagation)
            x = block.feed_forward(x)  # (B, N_l - P, C)
            trace.layers.append(layer)
        trace.final_tokens = x.shape[1]
        trace.logits = self.forward_head(x)
        return trace

    def forward_head(self, x):
        if self.global_pool == "avg":
            return self.head(self.fc_norm(x.mean(dim=1)))  # plain mean of all remaining tokens
        return self.head(self.norm(x)[:, 0])  # [CLS]

    def forward(self, x, generator=None):
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        return self.forward_trace(x, generator).logits
