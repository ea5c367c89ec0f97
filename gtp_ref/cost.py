"""Measured MACs of a real forward pass, split into backbone and token-reduction overhead.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions,
2 FLOPs per MAC).  Backbone: everything inside ``patch_embed``, the blocks' ``attn`` and ``mlp``
and the ``head``; overhead: every other counted op -- GTP's graph, propagation and cos-sim
scores, or ToMe's matching.  Element-wise work (softmax, norms, maxima, sorts, gathers) is not
counted by the flop counter; ``complexity.uncounted`` estimates it separately.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from gtp_ref._checks import check_tensor


def _backbone_module(name, root):
    parts = name.split(".")
    if parts[0] != root:
        return False
    rest = parts[1:]
    return rest in (["patch_embed"], ["head"]) or (
        len(rest) == 3 and rest[0] == "blocks" and rest[2] in ("attn", "mlp"))


def measure_macs(model, images, **forward_kwargs):
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
    backbone = sum(sum(v.values()) for k, v in counts.items() if _backbone_module(k, root))
    B = images.shape[0]
    if total % (2 * B) or backbone % (2 * B):
        raise ValueError("counted FLOPs are not 2 x MACs x batch: an op without a MAC formula?")
    return {"backbone": backbone // (2 * B), "overhead": (total - backbone) // (2 * B),
            "total": total // (2 * B)}
