"""The plain pre-norm ViT that GTP and ToMe plug into, in timm's layout.

Module names and parameter shapes are those of timm's ``VisionTransformer`` of the same
geometry (LayerNorm eps 1e-6; ``fc_norm`` instead of ``norm`` for ``global_pool="avg"``), so
``load_state_dict`` takes timm / DeiT checkpoints unchanged; timm itself is not needed.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gtp_ref._checks import GLOBAL_POOLS, choice, flag, integer, pair, real
from gtp_ref.select import sparsify_attention

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

    def __init__(self, in_chans, embed_dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, n, C)


class AttentionOut(NamedTuple):
    out: torch.Tensor  # (B, N, C) after the output projection
    attn: torch.Tensor | None  # (B, H, N, N) the map used for Att v (sparsified); None if fused
    raw: torch.Tensor | None  # (B, H, N, N) the map before sparsity; None if fused
    k: torch.Tensor  # (B, H, N, d) the keys (ToMe's similarity metric)


class Attention(nn.Module):
    """Multi-head attention with proportional attention and attention sparsity.

    Att = softmax(q k^T / sqrt(d_h) + log s) (log s only with token sizes s), then entries
    below the sparsity threshold are zeroed (spec 3.2; theta = 1: none).  ``fused=True`` uses
    ``scaled_dot_product_attention`` (as timm does by default) and returns no map.
    """

    def __init__(self, dim, num_heads, qkv_bias):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x):
        """q, k, v [B, H, N, d] of x [B, N, C]."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def project(self, out):
        """Att v [B, H, N, d] -> the output projection [B, N, C]."""
        B, H, N, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, N, H * d))

    def forward(self, x, token_scales=None, sparsity=1.0, fused=False, sparsify=sparsify_attention):
        q, k, v = self.heads(x)  # (B, H, N, d)
        log_s = None if token_scales is None else token_scales.log()[:, None, None, :]  # (B, 1, 1, N)
        if fused and sparsity >= 1.0:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=log_s)  # (B, H, N, d)
            return AttentionOut(self.project(out), None, None, k)
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        if log_s is not None:
            logits = logits + log_s  # + log s per key column
        raw = logits.softmax(dim=-1)  # (B, H, N, N)
        attn = sparsify(raw, sparsity)  # (B, H, N, N)
        return AttentionOut(self.project(attn @ v), attn, raw, k)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: x <- x + Attn(LN1 x), [token reduction], x <- x + MLP(LN2 x).

    The reduction (GTP or ToMe) sits between the two halves, so the models call them in turn.
    """

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x, token_scales=None, sparsity=1.0, fused=False, sparsify=sparsify_attention):
        """x + Attn(LN1 x), and the AttentionOut (maps, keys) for the reduction step."""
        a = self.attn(self.norm1(x), token_scales, sparsity, fused, sparsify)
        return x + a.out, a

    def feed_forward(self, x):
        return x + self.mlp(self.norm2(x))

    def forward(self, x):
        return self.feed_forward(self.attend(x)[0])


class ViT(nn.Module):
    """A plain ViT: [B, in_chans, H, W] -> logits [B, num_classes].  ``fused_attn`` chooses
    ``scaled_dot_product_attention`` (timm's default) over the explicit softmax attention."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, class_token=True,
                 global_pool="token", fused_attn=False):
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
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        if global_pool == "avg":
            self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def num_image_tokens(self):
        return self.grid[0] * self.grid[1]

    def check_input(self, x):
        want = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, want))}], "
                             f"got {list(x.shape)}")

    def embed(self, x):
        """Patch embedding, [CLS], position embedding: [B, in_chans, H, W] -> [B, N, C]."""
        self.check_input(x)
        x = self.patch_embed(x)  # (B, n, C)
        if self.class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        return x + self.pos_embed

    def forward_head(self, x):
        if self.global_pool == "avg":  # plain mean of the image tokens; [CLS] is left out (timm)
            return self.head(self.fc_norm(x[:, int(self.class_token):].mean(dim=1)))
        return self.head(self.norm(x)[:, 0])  # [CLS]

    def load_state_dict(self, state_dict, strict=True, assign=False):
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

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x, _ = block.attend(x, fused=self.fused_attn)
            x = block.feed_forward(x)
        return self.forward_head(x)
