"""The paper's backbones as GTPViT factories, and the paper's GTP settings for each.

Geometry comes from ``complexity.backbone.PRESETS`` (the same shapes the cost model counts), by
the same names: ``deit_tiny``, ``deit_small``, ``deit_base``, ``vit_large``, ``eva_large``.
Weights are not downloaded: load a timm / DeiT state_dict with ``model.load_state_dict``.

``paper_settings(name)`` is GTP as the supplement runs it on that backbone (C.2-C.3): the mixed
graph with M = 4 semantic neighbours, ``mixed_attn_max``, graph propagation with alpha = 0.1,
token sizes on, theta = 0.6 (0.5 for DeiT-B), and ``num_prop`` the first P of the backbone's
sweep ``PAPER_NUM_PROP`` (supplement Tables 1-3).  Every command, benchmark and test that runs
"the paper's settings" reads them here.
"""
from typing import Any

from complexity.backbone import PRESETS, ViTGeometry
from gtp_ref.model import GTPViT
from gtp_ref.settings import GTPSettings

# P (tokens propagated per block; ToMe's r) that the supplement sweeps, per backbone (Tables 1-3)
PAPER_NUM_PROP = {"deit_small": (8, 11, 14, 16), "deit_base": (4, 8, 11, 14, 16),
                  "vit_large": tuple(range(1, 9)), "eva_large": tuple(range(1, 9))}
PAPER = GTPSettings(num_prop=8, graph="mixed", num_neighbours=4, selection="mixed_attn_max", propagation="graph",
                    sparsity=0.6, alpha=0.1, token_scale=True)
PAPER_SPARSITY = {"deit_base": 0.5}  # theta where the supplement's C.2 differs from 0.6


def paper_settings(name: str | None = None, **changes: Any) -> GTPSettings:
    """The paper's GTP settings for the backbone ``name`` (one of ``PRESETS``; None: DeiT-S's, the
    paper's main setting, which also serves other ViTs), with ``changes`` applied."""
    if name is not None and name not in PRESETS:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(map(repr, PRESETS))}")
    settings = PAPER.replace(sparsity=PAPER_SPARSITY.get(name, PAPER.sparsity),
                             num_prop=PAPER_NUM_PROP.get(name, (PAPER.num_prop,))[0])
    return settings.replace(**changes)


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


def vit_large(**kwargs: Any) -> GTPViT:
    """ViT-L/16: 224 px, patch 16, C = 1024, 24 blocks, 16 heads, [CLS] pooled."""
    return _build("vit_large", **kwargs)


def eva_large(**kwargs: Any) -> GTPViT:
    """EVA-L as the authors' code builds it (``graph_propagation_eva_large_patch14_196``): 196 px,
    patch 14 (14 x 14 image tokens), C = 1024, 24 blocks, 16 heads, a [CLS] token, and a head that
    averages the image tokens ([CLS] left out) through ``fc_norm``.  Not timm's EVA-02 (RoPE,
    SwiGLU): convert that with ``from_timm``."""
    return _build("eva_large", **kwargs)


FACTORIES = {name: globals()[name] for name in PRESETS}  # the presets by name (the commands' --preset)
