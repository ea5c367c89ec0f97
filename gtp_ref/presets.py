"""The paper's backbones as GTPViT factories, and the paper's GTP settings for each.

The backbones are ``gtp_ref.config.PRESETS`` (the configs the cost model counts too), by the same
names: ``deit_tiny``, ``deit_small``, ``deit_base``, ``vit_large``, ``eva_large``; another class
count or image size is ``GTPViT(PRESETS[name].replace(num_classes=...), **settings)``.  Weights
are not downloaded: load a timm / DeiT state_dict with ``model.load_state_dict``.

``paper_settings(name)`` is GTP as the supplement runs it on that backbone (C.2-C.3): the mixed
graph with M = 4 semantic neighbours, ``mixed_attn_max``, graph propagation with alpha = 0.1,
token sizes on, theta = 0.6 (0.5 for DeiT-B), and ``num_prop`` the first P of the backbone's
sweep ``PAPER_NUM_PROP`` (supplement Tables 1-3).  Every command, benchmark and test that runs
"the paper's settings" reads them here.  ``authors_deit_base_settings(P)`` are the paper's
settings for DeiT-B with the best (theta, alpha) of the authors' later grid search for that P
(``AUTHORS_DEIT_BASE``; not the default).
"""

from typing import Any

from gtp_ref.config import PRESETS
from gtp_ref.model import GTPViT
from gtp_ref.settings import GTPSettings

# P (tokens propagated per block; ToMe's r) that the supplement sweeps, per backbone (Tables 1-3)
PAPER_NUM_PROP = {
    "deit_small": (8, 11, 14, 16),
    "deit_base": (4, 8, 11, 14, 16),
    "vit_large": tuple(range(1, 9)),
    "eva_large": tuple(range(1, 9)),
}
PAPER = GTPSettings(
    num_prop=8,
    graph="mixed",
    num_neighbours=4,
    selection="mixed_attn_max",
    propagation="graph",
    sparsity=0.6,
    alpha=0.1,
    token_scale=True,
)
PAPER_SPARSITY = {"deit_base": 0.5}  # theta where the supplement's C.2 differs from 0.6
# DeiT-B's best (theta, alpha) for each P, from the authors' grid search on ImageNet's validation set
# (mixed_attn_max, mixed graph, graph propagation, token sizes): the table of their README
# (github.com/Ackesnal/GTP-ViT, "Optimal Hyperparameters", commit 97a1178 of 2026-06-23).
AUTHORS_DEIT_BASE = {
    1: (0.8, 0.1),
    2: (0.7, 0.1),
    3: (0.9, 0.4),
    4: (1.0, 0.4),
    5: (0.6, 0.15),
    6: (0.6, 0.15),
    7: (0.6, 0.1),
    8: (0.6, 0.1),
    9: (0.7, 0.2),
    10: (0.5, 0.2),
    11: (0.8, 0.3),
    12: (0.8, 0.3),
    13: (0.7, 0.3),
    14: (0.8, 0.3),
}


def paper_settings(name: str | None = None, **changes: Any) -> GTPSettings:
    """The paper's GTP settings for the backbone ``name`` (one of ``PRESETS``; None: DeiT-S's, the
    paper's main setting, which also serves other ViTs), with ``changes`` applied."""
    if name is not None and name not in PRESETS:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(map(repr, PRESETS))}")
    settings = PAPER.replace(
        sparsity=PAPER_SPARSITY.get(name, PAPER.sparsity),
        num_prop=PAPER_NUM_PROP.get(name, (PAPER.num_prop,))[0],
    )
    return settings.replace(**changes)


def authors_deit_base_settings(num_prop: int, **changes: Any) -> GTPSettings:
    """The paper's settings for DeiT-B at P = ``num_prop`` (1 to 14) with the authors' best theta
    and alpha for that P (``AUTHORS_DEIT_BASE``), with ``changes`` applied."""
    if num_prop not in AUTHORS_DEIT_BASE:
        raise ValueError(f"num_prop={num_prop!r}: the authors' table covers P = 1 to 14")
    sparsity, alpha = AUTHORS_DEIT_BASE[num_prop]
    return paper_settings("deit_base", num_prop=num_prop, sparsity=sparsity, alpha=alpha).replace(**changes)


def deit_tiny(**settings: Any) -> GTPViT:
    """DeiT-Ti: 224 px, patch 16, C = 192, 12 blocks, 3 heads; GTP's ``settings``."""
    return GTPViT(PRESETS["deit_tiny"], **settings)


def deit_small(**settings: Any) -> GTPViT:
    """DeiT-S: 224 px, patch 16, C = 384, 12 blocks, 6 heads; GTP's ``settings``."""
    return GTPViT(PRESETS["deit_small"], **settings)


def deit_base(**settings: Any) -> GTPViT:
    """DeiT-B: 224 px, patch 16, C = 768, 12 blocks, 12 heads; GTP's ``settings``."""
    return GTPViT(PRESETS["deit_base"], **settings)


def vit_large(**settings: Any) -> GTPViT:
    """ViT-L/16: 224 px, patch 16, C = 1024, 24 blocks, 16 heads, [CLS] pooled; GTP's ``settings``."""
    return GTPViT(PRESETS["vit_large"], **settings)


def eva_large(**settings: Any) -> GTPViT:
    """EVA-L as the authors' code builds it (``graph_propagation_eva_large_patch14_196``): 196 px,
    patch 14 (14 x 14 image tokens), C = 1024, 24 blocks, 16 heads, a [CLS] token, and a head that
    averages the image tokens ([CLS] left out) through ``fc_norm``; GTP's ``settings``.  Not
    timm's EVA-02 (RoPE, SwiGLU): convert that with ``from_timm``."""
    return GTPViT(PRESETS["eva_large"], **settings)


FACTORIES = {name: globals()[name] for name in PRESETS}  # the presets by name (the commands' --preset)
