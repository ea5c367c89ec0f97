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
from dataclasses import dataclass
from typing import Any



@dataclass(frozen=True)
class ViTGeometry:
    """The shape of a ViT: enough to count its MACs and to build it (``gtp_ref.GTPViT``)."""

    name: str
    img_size: int | tuple[int, int] = 224  # an int for a square image, else (H, W)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_token: bool = True
    global_pool: str = "token"  # "avg": the mean of the image tokens ([CLS] left out)
    reg_tokens: int = 0  # register tokens after [CLS]: prefix tokens like it, never reduced

    @property
    def image_hw(self) -> tuple[int, int]:
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.image_hw
        return (h // self.patch_size, w // self.patch_size)

    @property
    def num_image_tokens(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def num_tokens(self) -> int:
        """N: image tokens plus the prefix tokens ([CLS] when the model has one, registers)."""
        return self.num_image_tokens + int(self.class_token) + self.reg_tokens

    @property
    def hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


PRESETS = {
    "deit_tiny": ViTGeometry("DeiT-Ti", embed_dim=192, depth=12, num_heads=3),
    "deit_small": ViTGeometry("DeiT-S", embed_dim=384, depth=12, num_heads=6),
    "deit_base": ViTGeometry("DeiT-B", embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTGeometry("ViT-L/16", embed_dim=1024, depth=24, num_heads=16),
    # As the authors' code builds EVA-L (graph_propagation_eva_large_patch14_196): patch 14 at
    # 196 px, a [CLS] token, and the head averaging the image tokens (N = 197; the supplement's
    # C.4 counts N = 196, without the [CLS] token).
    "eva_large": ViTGeometry("EVA-L", img_size=196, patch_size=14, embed_dim=1024, depth=24,
                             num_heads=16, global_pool="avg"),
}


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


def backbone_macs(geom: ViTGeometry, removed: int | list[int] = 0) -> dict[str, Any]:
    """MACs of ``geom`` when ``removed[l]`` tokens are removed between attention and MLP of block l.

    Returns a dict of named terms (each summed over the blocks), ``total`` and
    ``tokens`` (tokens entering each block).  ``removed`` is an int or a list of ``depth`` ints:
    GTP's ``complexity.schedule.prop_schedule`` or ToMe's ``tome_schedule``.
    """
    removed = [removed] * geom.depth if isinstance(removed, int) else list(removed)
    if len(removed) != geom.depth:
        raise ValueError(f"removed must have depth={geom.depth} entries, got {len(removed)}")
    C = geom.embed_dim
    terms = dict.fromkeys(["qkv", "attn_scores", "attn_values", "proj", "mlp"], 0)
    terms["patch_embed"] = patch_embed_macs(geom.num_image_tokens, C, geom.in_chans, geom.patch_size)
    tokens, N_l = [], geom.num_tokens
    for P_l in removed:
        if not 0 <= P_l < N_l:
            raise ValueError(f"cannot remove {P_l} of {N_l} tokens in a block")
        tokens.append(N_l)
        terms["qkv"] += qkv_macs(N_l, C)
        terms["attn_scores"] += attn_scores_macs(N_l, C)
        terms["attn_values"] += attn_values_macs(N_l, C)
        terms["proj"] += proj_macs(N_l, C)
        N_l -= P_l
        terms["mlp"] += mlp_macs(N_l, C, geom.hidden)
    terms["head"] = head_macs(C, geom.num_classes)
    terms["total"] = sum(terms.values())
    terms["tokens"] = tokens
    return terms
