"""The plain pre-norm ViT that GTP and ToMe plug into, in timm's layout.

Module names and parameter shapes are those of timm's ``VisionTransformer`` of the same
geometry (LayerNorm eps 1e-6; ``fc_norm`` instead of ``norm`` for ``global_pool="avg"``), so
``load_state_dict`` takes timm / DeiT checkpoints unchanged; timm itself is not needed.
"""
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtp_ref._checks import GLOBAL_POOLS, choice, flag, integer, pair, real

LN_EPS = 1e-6  # the DeiT / ViT factories' LayerNorm eps

# Parts of timm ViT checkpoints that this model does not have, by a key component they carry.
FOREIGN_KEYS = {
    "ls1": "layer scale (DeiT-III style ls1 / ls2)", "ls2": "layer scale (DeiT-III style ls1 / ls2)",
    "reg_token": "register tokens", "dist_token": "a distillation token (distilled DeiT)",
    "head_dist": "a distillation head (distilled DeiT)", "norm_pre": "a LayerNorm before the blocks (CLIP-style)",
    "q_norm": "query / key normalisation", "k_norm": "query / key normalisation",
    "attn_pool": "attention pooling (global_pool='map')", "backbone": "a convolutional stem (hybrid ViT)",
    "cls_token": "a [CLS] token", "fc_norm": "a LayerNorm after average pooling (fc_norm)",
    "norm": "a final LayerNorm (norm)",
}


class PatchEmbed(nn.Module):
    """[B, in_chans, H, W] -> [B, n, C], n = (H/p) (W/p), row-major over the patch grid."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, n, C)


class AttentionMap(nn.Module):
    """Att = softmax(q k^T / sqrt(d) + log s): q, k [B, H, N, d], sizes s [B, N] or None -> [B, H, N, N]."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        if token_sizes is not None:
            logits = logits + token_sizes.log()[:, None, None, :]  # + log s per key column
        return logits.softmax(dim=-1)


class ValueMix(nn.Module):
    """Att v with the heads concatenated: Att [B, H, N, N], v [B, H, N, d] -> [B, N, H d]."""

    def forward(self, attn: Tensor, v: Tensor) -> Tensor:
        out = attn @ v  # (B, H, N, d)
        B, H, N, d = out.shape
        return out.transpose(1, 2).reshape(B, N, H * d)


class Attention(nn.Module):
    """Multi-head self-attention with proportional attention: x [B, N, C] -> [B, N, C].

    Att = softmax(q k^T / sqrt(d_h) + log s), the log s per key column only with token sizes s.
    ``forward`` computes it fused (``scaled_dot_product_attention``, timm's default) or
    explicitly.  The token-reduction blocks call the steps themselves -- ``heads``, ``map``,
    ``mix``, ``proj`` -- so that a block can change the map between them; each step is a module
    (``map`` and ``mix`` have no parameters), so ``gtp_ref.cost`` counts it as the backbone's.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.map = AttentionMap(self.scale)
        self.mix = ValueMix()
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, H, N, d] of x [B, N, C]."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def forward(self, x: Tensor, token_sizes: Tensor | None = None, fused: bool = False) -> tuple[Tensor, Tensor]:
        """(Attn(x) [B, N, C], the keys k [B, H, N, d]); ``fused``: by scaled_dot_product_attention."""
        q, k, v = self.heads(x)  # (B, H, N, d)
        if fused:
            log_s = None if token_sizes is None else token_sizes.log()[:, None, None, :]  # (B, 1, 1, N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=log_s)  # (B, H, N, d)
            return self.proj(out.transpose(1, 2).flatten(2)), k
        return self.proj(self.mix(self.map(q, k, token_sizes), v)), k


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: x <- x + Attn(LN1 x), then x <- x + MLP(LN2 x).

    GTP and ToMe subclass it (``gtp_ref.model.GTPBlock``, ``gtp_ref.tome.ToMeBlock``) and put
    their token reduction between the two halves; the parameters are the same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, fused: bool = False) -> Tensor:
        x = x + self.attn(self.norm1(x), fused=fused)[0]  # (B, N, C)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A plain ViT: [B, in_chans, H, W] -> logits [B, num_classes].  ``fused_attn`` chooses
    ``scaled_dot_product_attention`` (timm's default) over the explicit softmax attention."""

    block_class: type[Block] = Block  # the token-reduction models put their own block here

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 global_pool: str = "token", fused_attn: bool = False) -> None:
        super().__init__()
        img_size, patch_size = pair("img_size", img_size), pair("patch_size", patch_size)
        in_chans = integer("in_chans", in_chans, minimum=1)
        num_classes = integer("num_classes", num_classes, minimum=0)
        embed_dim = integer("embed_dim", embed_dim, minimum=1)
        depth = integer("depth", depth, minimum=1)
        num_heads = integer("num_heads", num_heads, minimum=1)
        mlp_ratio = real("mlp_ratio", mlp_ratio, 0.0, low_open=True)
        qkv_bias, class_token = flag("qkv_bias", qkv_bias), flag("class_token", class_token)
        fused_attn = flag("fused_attn", fused_attn)
        choice("global_pool", global_pool, GLOBAL_POOLS)
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"patch_size={patch_size!r} must be square (timm's PatchEmbed)")
        if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
            raise ValueError(f"img_size={img_size!r} is not divisible by patch_size={patch_size[0]}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio!r} gives an MLP of int({embed_dim} * {mlp_ratio}) = 0 "
                             "hidden units; need at least 1")
        if not class_token and global_pool == "token":
            raise ValueError("global_pool='token' needs a [CLS] token (class_token=True); "
                             "use global_pool='avg'")
        self.grid = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.img_size, self.in_chans = img_size, in_chans
        self.class_token, self.global_pool, self.fused_attn = class_token, global_pool, fused_attn
        n = self.grid[0] * self.grid[1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size[0])
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + int(class_token), embed_dim) * 0.02)
        self.blocks = nn.ModuleList(self.block_class(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        if global_pool == "avg":
            self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def check_input(self, x: Tensor) -> None:
        want = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, want))}], "
                             f"got {list(x.shape)}")

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding, [CLS], position embedding: [B, in_chans, H, W] -> [B, N, C]."""
        self.check_input(x)
        x = self.patch_embed(x)  # (B, n, C)
        if self.class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        return x + self.pos_embed

    def forward_head(self, x: Tensor) -> Tensor:
        """The tokens after the last block [B, N_L, C] -> logits [B, num_classes]."""
        if self.global_pool == "avg":  # plain mean of the image tokens; [CLS] is left out (timm)
            return self.head(self.fc_norm(x[:, int(self.class_token):].mean(dim=1)))
        return self.head(self.norm(x)[:, 0])  # [CLS]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, but a checkpoint of an architecture this model does not
        have is refused with a ValueError naming the feature (not a list of unexpected keys).
        Keys cannot show every difference: a post-norm ViT has the same keys as a pre-norm one
        (docs/spec.md, "Which checkpoints load")."""
        own = set(self.state_dict())
        for key in state_dict:
            if key in own:
                continue
            for marker, feature in FOREIGN_KEYS.items():
                if marker in key.split("."):
                    raise ValueError(f"state_dict has {key!r}: {feature}, which this model was not built with")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        x = self.embed(x)  # (B, N, C)
        for block in self.blocks:
            x = block(x, self.fused_attn)
        return self.forward_head(x)
