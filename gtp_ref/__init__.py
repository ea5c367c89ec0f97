"""gtp-ref: the reference implementation of GTP (Graph-based Token Propagation, GTP-ViT).

``from_timm(timm_model, **gtp_settings)`` puts GTP into your timm ViT; ``GTPViT`` is the model
(its whole GTP step is ``gtp_ref.model.GTPBlock.forward``), the presets build the paper's
backbones.  ``gtp_ref.dense`` holds the op-level reference (token_graph, to_dense,
sparsify_attention, token_scores, select_tokens, propagate) that ``gtp_ref.sparse`` and
``gtp_ref.fast`` implement too; ``gtp_ref.tome`` runs ToMe on the same backbone.
"""
from gtp_ref.model import GTPTrace, GTPViT, LayerTrace, Provenance
from gtp_ref.presets import (
           deit_base,
           deit_small,
           deit_tiny,
           eva_large_style,
           vit_large_patch16,
)
from gtp_ref.timm_models import from_timm, tome_from_timm

__all__ = ["from_timm", "tome_from_timm", "GTPViT", "GTPTrace", "LayerTrace", "Provenance", "deit_tiny",
           "deit_small", "deit_base", "vit_large_patch16", "eva_large_style"]
