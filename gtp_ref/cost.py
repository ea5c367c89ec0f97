"""Measured MACs of a real forward pass, split into backbone and token-reduction overhead.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions,
2 FLOPs per MAC).  Backbone: everything inside ``patch_embed``, the blocks' ``attn`` (or, where a
token-reduction block calls its steps itself, ``attn.qkv``, ``attn.map``, ``attn.mix`` and
``attn.proj``) and ``mlp``, and the ``head``; overhead: every other counted op -- GTP's graph,
propagation and cos-sim scores, or ToMe's matching.  Element-wise work (softmax, norms, maxima, sorts, gathers) is not
counted by the flop counter; ``complexity.uncounted`` estimates it separately.
"""
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from gtp_ref._checks import check_tensor


def _backbone_module(name: str, root: str) -> bool:
    parts = name.split(".")
    if parts[0] != root:
        return False
    rest = parts[1:]
    return rest in (["patch_embed"], ["head"]) or (len(rest) >= 3 and rest[0] == "blocks" and (
        rest[2:] in (["attn"], ["mlp"]) or (rest[2] == "attn" and rest[3:] in (["qkv"], ["map"], ["mix"], ["proj"]))))


def _outermost(names: list[str]) -> list[str]:
    """The names none of whose ancestors is in ``names`` (a module's count includes its children's)."""
    return [n for n in names if not any(n.startswith(m + ".") for m in names)]


def measure_macs(model: nn.Module, images: Tensor, **forward_kwargs: Any) -> dict[str, int]:
    """MACs per image: {"backbone", "overhead", "total"} for ``model(images)`` (no_grad).

    ``images`` must hold at least one image (MACs *per image* of an empty batch are undefined:
    ValueError).
    """
    check_tensor("images", images, 4)
    if images.shape[0] == 0:
        raise ValueError(f"images has shape {list(images.shape)}: MACs per image need at least one image")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, **forward_kwargs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = sum(counts["Global"].values())
    backbone = sum(sum(counts[k].values()) for k in _outermost([k for k in counts if _backbone_module(k, root)]))
    B = images.shape[0]
    if total % (2 * B) or backbone % (2 * B):
        raise ValueError("counted FLOPs are not 2 x MACs x batch: an op without a MAC formula?")
    return {"backbone": backbone // (2 * B), "overhead": (total - backbone) // (2 * B),
            "total": total // (2 * B)}
