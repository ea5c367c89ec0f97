"""gtp-ref: the reference implementation of GTP (Graph-based Token Propagation, GTP-ViT).

``gtp_ref.dense`` holds the op-level reference (token_graph, to_dense, sparsify_attention,
token_scores, select_tokens, propagate); ``GTPViT`` wires it into a timm-compatible ViT.
"""
from gtp_ref.model import GTPTrace, GTPViT, LayerTrace
from gtp_ref.presets import (
           deit_base,
           deit_small,
           deit_tiny,
           eva_large_style,
           vit_large_patch16,
)

__all__ = ["GTPViT", "GTPTrace", "LayerTrace", "deit_tiny", "deit_small", "deit_base",
           "vit_large_patch16", "eva_large_style"]
