"""The plain pre-norm ViT that GTP and ToMe plug into, in timm's layout.

Module names and parameter shapes are those of timm's ``VisionTransformer`` of the same
geometry (LayerNorm eps 1e-6 by default; ``fc_norm`` instead of ``norm`` for average pooling),
so ``load_state_dict`` takes timm / DeiT checkpoints unchanged; timm itself is not needed.
``gtp_ref.timm_models.from_timm`` builds the model from a timm model and checks that it is one
this layout can represent.
"""
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtp_ref._checks import GLOBAL_POOLS, choice, flag, integer, pair, real

LN_EPS = 1e-6  # the DeiT / ViT factories' LayerNorm eps
NORMS = ("layernorm", "rmsnorm")  # the kinds of norm, one for the whole model (timm's LayerNorm, RmsNorm)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")  # the MLP's: exact GELU, tanh-approximated GELU, CLIP's QuickGELU

# Parts of timm ViT checkpoints that this model does not have, by a key component they carry.
FOREIGN_KEYS = {
    "ls1": "layer scale (DeiT-III style ls1 / ls2)", "ls2": "layer scale (DeiT-III style ls1 / ls2)",
    "reg_token": "register tokens", "dist_token": "a distillation token (distilled DeiT)",
    "head_dist": "a distillation head (distilled DeiT)", "norm_pre": "a norm before the blocks (CLIP-style)",
    "q_norm": "query / key normalisation", "k_norm": "query / key normalisation",
    "attn_pool": "attention pooling (global_pool='map')", "backbone": "a convolutional stem (hybrid ViT)",
    "cls_token": "a [CLS] token", "fc_norm": "a LayerNorm after pooling (fc_norm)",
    "norm": "a LayerNorm before pooling (norm)",
}


class RmsNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension (timm's RmsNorm): [..., C] -> [..., C]."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class QuickGELU(nn.Module):
    """x sigmoid(1.702 x): OpenAI CLIP's approximation of GELU."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def norm_layer(kind: str, dim: int, eps: float) -> nn.Module:
    """A LayerNorm (weight and bias) or an RmsNorm (weight) over dim channels."""
    return nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else RmsNorm(dim, eps)


def activation(kind: str) -> nn.Module:
    """The MLP activation of ``ACTIVATIONS`` named ``kind``."""
    if kind == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if kind == "gelu_tanh" else "none")


class PatchEmbed(nn.Module):
    """[B, in_chans, H, W] -> [B, n, C], n = (H/p) (W/p), row-major over the patch grid; a norm of
    each token after the projection with ``norm`` (AIMv2)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, bias: bool = True,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = norm or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, n, C)


class AttentionMap(nn.Module):
    """Att = softmax(q k^T / sqrt(d) + log s): q, k [B, H, N, d], sizes s [B, N] or None -> [B, H, N, N].

    The scale multiplies q (N d products, as timm does), not the N^2 logits."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        return softmax_map(q * self.scale, k, token_sizes)


def softmax_map(q: Tensor, k: Tensor, token_sizes: Tensor | None = None) -> Tensor:
    """softmax(q k^T + log s) for q already scaled: q, k [B, H, N, d], sizes s [B, N] or None ->
    [B, H, N, N] (the attention map's one definition; the backends that compute it use it too)."""
    logits = q @ k.transpose(-2, -1)  # (B, H, N, N)
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
    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), activation(act), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel (DeiT-III, timm's ``ls1`` / ``ls2``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block: x <- x + ls1(Attn(LN1 x)), then x <- x + ls2(MLP(LN2 x)); ls1, ls2 are the
    identity without layer scale.

    GTP and ToMe subclass it (``gtp_ref.model.GTPBlock``, ``gtp_ref.tome.ToMeBlock``) and put
    their token reduction between the two halves; the parameters are the same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 init_values: float | None = None, norm_eps: float = LN_EPS, norm: str = "layernorm",
                 act: str = "gelu") -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = nn.Identity() if init_values is None else LayerScale(dim, init_values)
        self.norm2 = norm_layer(norm, dim, norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.ls2 = nn.Identity() if init_values is None else LayerScale(dim, init_values)

    def forward(self, x: Tensor, fused: bool = False) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), fused=fused)[0])  # (B, N, C)
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """A plain pre-norm ViT in timm's layout: [B, in_chans, H, W] -> logits [B, num_classes].

    The tokens are the prefix tokens -- a ``[CLS]`` token (``class_token``), a distillation token
    (``dist_token``, distilled DeiT) and ``reg_tokens`` register tokens, in that order -- then the
    image tokens of the patch grid, row-major.  As in timm: ``no_embed_class`` adds the position
    embedding to the image tokens only; ``pre_norm`` puts a norm (``norm_pre``) before the blocks
    and ``embed_norm`` one after the patch projection; ``init_values`` turns on layer scale;
    ``fc_norm`` chooses the final norm after pooling (``fc_norm``) over the one before it
    (``norm``), by default after for average pooling and before for ``[CLS]`` pooling, and
    ``final_norm=False`` drops both; ``norm`` is the kind of every norm ("layernorm" or
    "rmsnorm"), ``act`` the MLP's activation ("gelu", "gelu_tanh", "quick_gelu");
    ``global_pool="avg"`` averages the image tokens (prefix tokens left out).  With a
    distillation token the logits are the mean of ``head`` on [CLS] and ``head_dist`` on the
    distillation token (timm's inference).  ``fused_attn`` chooses ``scaled_dot_product_attention`` (timm's default) over
    the explicit softmax attention.
    """

    block_class: type[Block] = Block  # the token-reduction models put their own block here

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 global_pool: str = "token", fused_attn: bool = False, *, reg_tokens: int = 0,
                 no_embed_class: bool = False, pre_norm: bool = False, fc_norm: bool | None = None,
                 init_values: float | None = None, norm_eps: float = LN_EPS, patch_bias: bool = True,
                 norm: str = "layernorm", act: str = "gelu", final_norm: bool = True, embed_norm: bool = False,
                 dist_token: bool = False) -> None:
        super().__init__()
        img_size, patch_size = pair("img_size", img_size), pair("patch_size", patch_size)
        in_chans = integer("in_chans", in_chans, minimum=1)
        num_classes = integer("num_classes", num_classes, minimum=0)
        embed_dim = integer("embed_dim", embed_dim, minimum=1)
        depth = integer("depth", depth, minimum=1)
        num_heads = integer("num_heads", num_heads, minimum=1)
        mlp_ratio = real("mlp_ratio", mlp_ratio, 0.0, low_open=True)
        qkv_bias, class_token = flag("qkv_bias", qkv_bias), flag("class_token", class_token)
        fused_attn, no_embed_class = flag("fused_attn", fused_attn), flag("no_embed_class", no_embed_class)
        pre_norm, patch_bias = flag("pre_norm", pre_norm), flag("patch_bias", patch_bias)
        reg_tokens = integer("reg_tokens", reg_tokens, minimum=0)
        norm_eps = real("norm_eps", norm_eps, 0.0, low_open=True)
        init_values = None if init_values is None else real("init_values", init_values)
        choice("global_pool", global_pool, GLOBAL_POOLS)
        choice("norm", norm, NORMS)
        choice("act", act, ACTIVATIONS)
        final_norm, embed_norm = flag("final_norm", final_norm), flag("embed_norm", embed_norm)
        dist_token = flag("dist_token", dist_token)
        fc_norm = global_pool == "avg" if fc_norm is None else flag("fc_norm", fc_norm)
        if dist_token and (not class_token or global_pool != "token"):
            raise ValueError("dist_token=True (distilled DeiT) needs class_token=True and global_pool='token'")
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
        self.num_prefix_tokens = int(class_token) + int(dist_token) + reg_tokens
        self.no_embed_class = no_embed_class
        n = self.grid[0] * self.grid[1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size[0], patch_bias,
                                      norm_layer(norm, embed_dim, norm_eps) if embed_norm else None)
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim))
        embed_len = n if no_embed_class else n + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, embed_len, embed_dim) * 0.02)
        self.norm_pre = norm_layer(norm, embed_dim, norm_eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(self.block_class(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_eps,
                                                     norm, act) for _ in range(depth))
        self.norm = norm_layer(norm, embed_dim, norm_eps) if final_norm and not fc_norm else nn.Identity()
        self.fc_norm = norm_layer(norm, embed_dim, norm_eps) if final_norm and fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if dist_token:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes  # 0: no head, the pooled features are the output (as timm)
        self.dropout_not_applied: tuple[str, ...] = ()  # from_timm: the timm model's dropout, which this lacks

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def fused_attn(self) -> bool:
        """Whether the blocks run ``scaled_dot_product_attention`` (assigned: True or False)."""
        return self._fused_attn

    @fused_attn.setter
    def fused_attn(self, value: bool) -> None:
        self._fused_attn = flag("fused_attn", value)

    def check_input(self, x: Tensor) -> None:
        """x must be a [B, in_chans, H, W] tensor of the parameters' dtype (under autocast too: autocast
        casts inside the model); TypeError / ValueError naming what differs, before any work."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        want = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, want))}], "
                             f"got {list(x.shape)}")
        dtype = self.patch_embed.proj.weight.dtype
        if x.dtype != dtype:
            model = f" or the model (model.to({x.dtype}))" if x.is_floating_point() else ""
            raise TypeError(f"the input has dtype {x.dtype}, the model's parameters {dtype}: convert the images "
                            f"(x.to({dtype})){model} so that they match")

    def train(self, mode: bool = True) -> "ViT":
        """``nn.Module.train``; warns when the model was converted from a timm model that applies
        dropout or drop path in training mode (``dropout_not_applied``): this model applies none."""
        if mode and getattr(self, "dropout_not_applied", None):
            warnings.warn(f"training mode: this model applies no dropout or drop path, which the timm model it was "
                          f"converted from applies in training mode ({', '.join(self.dropout_not_applied)})",
                          stacklevel=2)
        return super().train(mode)

    def __prepare_scriptable__(self) -> "ViT":
        """``torch.jit.script`` cannot compile these models (data-dependent token counts, dataclass
        traces, backends as objects): say so, and what works instead."""
        raise TypeError(f"{type(self).__name__} cannot be compiled by torch.jit.script; use torch.compile(model) "
                        "(fullgraph=True with the dense and fast backends) or torch.export.export(model, (x,))")

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding, prefix tokens, position embedding, norm_pre: [B, in_chans, H, W] -> [B, N, C]."""
        self.check_input(x)
        x = self.patch_embed(x)  # (B, n, C)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (getattr(self, "cls_token", None), getattr(self, "dist_token", None),
                                                         getattr(self, "reg_token", None)) if t is not None]
        if self.no_embed_class:  # the position embedding covers the image tokens only
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)  # (B, N, C)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed  # (B, N, C)
        return self.norm_pre(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """The tokens after the last block [B, N_L, C] -> logits [B, num_classes]."""
        x = self.norm(x)  # (B, N_L, C); the identity with fc_norm
        if hasattr(self, "dist_token"):  # distilled DeiT: the mean of the two heads' logits (timm's inference)
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        if self.global_pool == "avg":  # plain mean of the image tokens; prefix tokens left out (timm)
            pooled = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, C)
        else:
            pooled = x[:, 0]  # [CLS]
        return self.head(self.fc_norm(pooled))

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
