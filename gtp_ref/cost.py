"""Measured MACs of a real forward pass, split into backbone and token-reduction overhead.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions,
2 FLOPs per MAC).  Backbone: everything inside ``patch_embed``, the blocks' ``attn`` (or, where a
token-reduction block calls its steps itself, ``attn.qkv`` or ``attn.q_proj`` / ``k_proj`` /
``v_proj``, ``attn.map``, ``attn.mix`` and ``attn.proj``) and ``mlp``, the attention pool
(``attn_pool``) and the ``head``; overhead: every other counted op -- GTP's graph,
propagation and cos-sim scores, or ToMe's matching.  Element-wise work (softmax, norms, maxima,
sorts, gathers) is not counted by the flop counter; ``complexity.uncounted`` estimates it separately.

Two things the flop counter alone gets wrong are fixed here: it has no formula for the CPU's
fused attention (``aten._scaled_dot_product_flash_attention_for_cpu``, what
``scaled_dot_product_attention`` runs on the CPU), so a timm ViT's attention products would be
missed -- this module gives it the formula of the other fused attentions; and it silently counts
nothing for a product it has no formula for -- here any such op (by name: matrix products,
convolutions, attention, einsum) raises instead of under-counting.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from gtp_ref._checks import check_tensor


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _sdpa_cpu_flops(
    query: Tensor, key: Tensor, value: Tensor, *args: Any, out_val: Any = None, **kwargs: Any
) -> int:
    """q k^T and Att v of the CPU's fused attention: 2 (B H N N_k d + B H N N_k d_v) FLOPs."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _is_product(name: str) -> bool:
    """Whether an ATen op's name says it multiplies and accumulates (mm, bmm, addmm, mv, dot,
    matmul, einsum, conv..., ...attention..., linear)."""
    words = name.strip("_").split("_")
    return any(
        w.endswith("mm")
        or w.endswith("mv")
        or w.startswith("conv")
        or w in ("dot", "vdot", "matmul", "einsum", "tensordot", "attention", "linear")
        for w in words
    )


class _ProductOps(TorchDispatchMode):
    """Records the ATen ops a forward runs whose names say they multiply and accumulate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[Any] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if _is_product(func.overloadpacket.__name__):
            self.seen.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


# the attention's steps that a token-reduction block calls apart, each the backbone's
ATTENTION_STEPS = (["qkv"], ["q_proj"], ["k_proj"], ["v_proj"], ["map"], ["mix"], ["proj"])


def _backbone_module(name: str, root: str) -> bool:
    parts = name.split(".")
    if parts[0] != root:
        return False
    rest = parts[1:]
    return rest in (["patch_embed"], ["head"], ["attn_pool"]) or (
        len(rest) >= 3
        and rest[0] == "blocks"
        and (rest[2:] in (["attn"], ["mlp"]) or (rest[2] == "attn" and rest[3:] in ATTENTION_STEPS))
    )


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
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _ProductOps() as products:
        model(images, **forward_kwargs)
    unseen = sorted(str(op) for op in products.seen if op not in counter.flop_registry)
    if unseen:
        raise ValueError(
            f"the forward runs {', '.join(unseen)}, a product the flop counter has no formula "
            "for: its MACs would be missing from the count"
        )
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = sum(counts["Global"].values())
    backbone = sum(
        sum(counts[k].values()) for k in _outermost([k for k in counts if _backbone_module(k, root)])
    )
    B = images.shape[0]
    if total % (2 * B) or backbone % (2 * B):
        raise ValueError("counted FLOPs are not 2 x MACs x batch: an op without a MAC formula?")
    return {
        "backbone": backbone // (2 * B),
        "overhead": (total - backbone) // (2 * B),
        "total": total // (2 * B),
    }
