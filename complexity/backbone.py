"""MACs of a plain pre-norm ViT for a per-layer token schedule (supplement Tables 1-2).

Counted: every multiply-accumulate of a matrix product -- the patch-embedding convolution,
per block the qkv projection, the attention scores q k^T, the weighted sum Att v, the output
projection and the two MLP layers, and the classification head.  Not counted (no MACs, or
O(N C) element-wise work): LayerNorm, softmax, GELU, residual additions, pooling.  This is
what ``torch.utils.flop_counter`` counts (it reports FLOPs = 2 x MACs).

Token schedule: block ``l`` runs its attention on the ``N_l`` tokens that enter it; the
reduction step (GTP propagation or ToMe merging) removes ``P_l`` of them *between* attention
and MLP, so the MLP runs on ``N_l - P_l`` tokens, and ``N_{l+1} = N_l - P_l``.
"""

from typing import Any

from gtp_ref.config import ViTConfig


# ---- one named term per matrix product (N tokens, C channels) -------------------------------
def patch_embed_macs(n_img: int, C: int, in_chans: int, patch_size: int) -> int:
    """Conv with kernel = stride = patch: n_img C (in_chans p^2)."""
    return n_img * C * in_chans * patch_size**2


def qkv_macs(N: int, C: int) -> int:
    return 3 * N * C * C


def attn_scores_macs(N: int, C: int) -> int:
    """q k^T over all heads: H N N (C / H) = N^2 C, independent of H."""
    return N * N * C


def attn_values_macs(N: int, C: int) -> int:
    """Att v over all heads: N^2 C."""
    return N * N * C


def proj_macs(N: int, C: int) -> int:
    return N * C * C


def mlp_macs(N: int, C: int, hidden: int) -> int:
    return 2 * N * C * hidden


def head_macs(C: int, num_classes: int) -> int:
    """One pooled token ([CLS] or the mean) through the linear classifier."""
    return C * num_classes


def backbone_macs(config: ViTConfig, removed: int | list[int] = 0) -> dict[str, Any]:
    """MACs of the backbone ``config`` (``gtp_ref.config.ViTConfig``: its plain-ViT products) when
    ``removed[l]`` tokens are removed between attention and MLP of block l.

    Returns a dict of named terms (each summed over the blocks), ``total`` and
    ``tokens`` (tokens entering each block).  ``removed`` is an int or a list of ``depth`` ints:
    GTP's ``gtp_ref.schedule.prop_schedule`` or ToMe's ``tome_schedule``.
    """
    removed = [removed] * config.depth if isinstance(removed, int) else list(removed)
    if len(removed) != config.depth:
        raise ValueError(f"removed must have depth={config.depth} entries, got {len(removed)}")
    C, patches = config.embed_dim, config.patches
    terms = dict.fromkeys(["qkv", "attn_scores", "attn_values", "proj", "mlp"], 0)
    terms["patch_embed"] = patch_embed_macs(config.num_image_tokens, C, patches.in_chans, patches.patch_size)
    tokens, N_l = [], config.num_tokens
    for P_l in removed:
        if not 0 <= P_l < N_l:
            raise ValueError(f"cannot remove {P_l} of {N_l} tokens in a block")
        tokens.append(N_l)
        terms["qkv"] += qkv_macs(N_l, C)
        terms["attn_scores"] += attn_scores_macs(N_l, C)
        terms["attn_values"] += attn_values_macs(N_l, C)
        terms["proj"] += proj_macs(N_l, C)
        N_l -= P_l
        terms["mlp"] += mlp_macs(N_l, C, config.hidden)
    terms["head"] = head_macs(C, config.head.num_classes)
    terms["total"] = sum(terms.values())
    terms["tokens"] = tokens
    return terms
