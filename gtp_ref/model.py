"""GTPViT: a pre-norm ViT with GTP between attention and MLP of every block (spec section 3).

The backbone is ``gtp_ref.vit.ViT`` (timm's layout: timm / DeiT checkpoints load unchanged).
The GTP ops come from the backend module (``gtp_ref.dense`` or ``gtp_ref.sparse``); this file
only wires them in.
"""
import importlib
from dataclasses import dataclass, field

import torch

from gtp_ref._checks import (BACKENDS, GRAPHS, PROPAGATIONS, SELECTIONS, check_alpha,
                             check_num_neighbours, check_sparsity, choice, flag, integer, prop_schedule)
from gtp_ref.margins import attention_margin, selection_margin, semantic_margin
from gtp_ref.select import sparsity_k
from gtp_ref.vit import ViT


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


class GTPViT(ViT):
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
        choice("graph", graph, GRAPHS)
        choice("selection", selection, SELECTIONS)
        choice("propagation", propagation, PROPAGATIONS)
        choice("backend", backend, BACKENDS)
        sparsity, alpha = check_sparsity(sparsity), check_alpha(alpha)
        token_scale = flag("token_scale", token_scale)
        if token_scale and propagation == "graph" and alpha < 0:
            raise ValueError(f"alpha={alpha!r} must be >= 0 with token_scale=True: sizes "
                             "s_K + alpha Â[K, P] s_P must stay positive for log s")
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                         mlp_ratio, qkv_bias, class_token, global_pool)
        if not self.class_token and selection.startswith("cls_attn"):
            raise ValueError(f"selection={selection!r} needs a [CLS] token (class_token=True)")
        n = self.num_image_tokens
        num_neighbours = integer("num_neighbours", num_neighbours, minimum=0)
        if graph in ("semantic", "mixed"):
            check_num_neighbours(num_neighbours, n)
        self.graph, self.num_neighbours, self.selection = graph, num_neighbours, selection
        self.propagation, self.sparsity, self.alpha = propagation, sparsity, alpha
        self.token_scale, self.backend = token_scale, backend
        self.num_prop = num_prop  # validated by the property
        self.ops = importlib.import_module(f"gtp_ref.{backend}")

    @property
    def num_prop(self):
        """Tokens propagated in each block, one int per block (assigning an int or a list of
        one int per block is validated like the constructor's argument)."""
        return self._num_prop

    @num_prop.setter
    def num_prop(self, value):
        self._num_prop = prop_schedule(value, len(self.blocks), self.num_image_tokens, self.propagation)

    def forward_trace(self, x, generator=None, margins=False):
        """Logits and, per block, the tokens entering it, the sparsity k and the selection.

        ``margins=True`` also records how close every discrete decision came to flipping
        (``gtp_ref.margins``): where two implementations may legitimately disagree by rounding.
        """
        ops, c = self.ops, int(self.class_token)
        x = self.embed(x)  # (B, N, C)
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
            x, layer.scores = self._attend(block, x, token_scales, P, generator, margins, layer)
            if P > 0:
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

    def _attend(self, block, x, token_scales, P, generator, margins, layer):
        """x + Attn(LN1 x) and, where P > 0, the token scores (None otherwise).

        A backend with ``attend_and_score`` (``gtp_ref.fast``) may do both in one fused pass;
        it returns None where it does not apply, and margins need the raw map, so then the
        reference path: ``block.attend`` with the backend's sparsity, then ``token_scores``.
        """
        fused = getattr(self.ops, "attend_and_score", None)
        if fused is not None and not margins:
            out = fused(block, x, token_scales, self.sparsity, self.selection if P > 0 else None,
                        self.class_token)
            if out is not None:
                return out
        x, a = block.attend(x, token_scales, self.sparsity, sparsify=self.ops.sparsify_attention)
        if margins:
            layer.margins["attn"] = attention_margin(a.raw, self.sparsity)
        if P == 0:
            return x, None
        return x, self.ops.token_scores(a.attn, self.selection, self.class_token, generator)

    def forward(self, x, generator=None):
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        return self.forward_trace(x, generator).logits
