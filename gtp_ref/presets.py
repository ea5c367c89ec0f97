"""The paper's backbones as GTPViT factories; GTP keyword arguments pass through.

Geometry comes from ``complexity.backbone.PRESETS``, the same shapes the cost model counts.
Weights are not downloaded: load a timm / DeiT state_dict with ``model.load_state_dict``.
"""
from typing import Any

from complexity.backbone import PRESETS, ViTGeometry
from gtp_ref.model import GTPViT


# the factories below by name (the command-line tools' --preset) -> their complexity.backbone.PRESETS key
FACTORIES = {"deit_tiny": "deit_tiny", "deit_small": "deit_small", "deit_base": "deit_base",
             "vit_large_patch16": "vit_large", "eva_large_style": "eva_large"}


def vit_kwargs(g: ViTGeometry) -> dict[str, Any]:
    """The ViT / GTPViT / ToMeViT keyword arguments of a ``complexity.backbone.ViTGeometry``."""
    return dict(img_size=g.img_size, patch_size=g.patch_size, in_chans=g.in_chans,
                num_classes=g.num_classes, embed_dim=g.embed_dim, depth=g.depth,
                num_heads=g.num_heads, mlp_ratio=g.mlp_ratio, class_token=g.class_token,
                global_pool=g.global_pool)


def _build(key: str, **kwargs: Any) -> GTPViT:
    return GTPViT(**{**vit_kwargs(PRESETS[key]), **kwargs})


def deit_tiny(**kwargs: Any) -> GTPViT:
    """DeiT-Ti: 224 px, patch 16, C = 192, 12 blocks, 3 heads."""
    return _build("deit_tiny", **kwargs)


def deit_small(**kwargs: Any) -> GTPViT:
    """DeiT-S: 224 px, patch 16, C = 384, 12 blocks, 6 heads."""
    return _build("deit_small", **kwargs)


def deit_base(**kwargs: Any) -> GTPViT:
    """DeiT-B: 224 px, patch 16, C = 768, 12 blocks, 12 heads."""
    return _build("deit_base", **kwargs)


def vit_large_patch16(**kwargs: Any) -> GTPViT:
    """ViT-L/16: 224 px, patch 16, C = 1024, 24 blocks, 16 heads, [CLS] pooled."""
    return _build("vit_large", **kwargs)


def eva_large_style(**kwargs: Any) -> GTPViT:
    """EVA-L as the authors' code builds it: 196 px, patch 14 (14 x 14 image tokens), C = 1024,
    24 blocks, 16 heads, a [CLS] token, and a head that averages the image tokens ([CLS] left
    out) through ``fc_norm``."""
    return _build("eva_large", **kwargs)
