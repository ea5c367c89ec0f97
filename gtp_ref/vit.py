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
from torch import Tensor, nn

from gtp_ref._checks import GLOBAL_POOLS, choice, flag, integer, pair, real
from gtp_ref.attention import LN_EPS, Attention, AttentionMap, ValueMix, softmax_map  # noqa: F401  (re-exported)
from gtp_ref.layers import (  # noqa: F401  (RmsNorm, QuickGELU, activation, Mlp: re-exported, their old home)
    ACTIVATIONS,
    FOREIGN_KEYS,
    AttentionPool,
    MLPS,
    NORMS,
    ROPE_LAYOUTS,
    LayerScale,
    Mlp,
    QuickGELU,
    RmsNorm,
    activation,
    axial_rope_table,
    mlp_layer,
    norm_layer,
)


class PatchEmbed(nn.Module):
    """[B, in_chans, H, W] -> [B, n, C], n = (H/p) (W/p), row-major over the patch grid; a norm of
    each token after the projection with ``norm`` (AIMv2).  With a ``backbone`` (a hybrid ViT's
    convolutional stem, any module from images to a feature map or a list ending in one) the
    patches are cut from its output: in_chans is then its channels; without ``proj`` its map's
    pixels are the tokens."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, bias: bool = True,
                 norm: nn.Module | None = None, backbone: nn.Module | None = None, proj: bool = True) -> None:
        super().__init__()
        if backbone is not None:
            self.backbone = backbone
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias) if proj \
            else nn.Identity()
        self.norm = norm or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "backbone"):
            x = self.backbone(x)
            x = x[-1] if isinstance(x, (list, tuple)) else x  # (B, in_chans, H', W')
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, n, C)


class Block(nn.Module):
    """Pre-norm block: x <- x + ls1(Attn(LN1 x)), then x <- x + ls2(MLP(LN2 x)); ls1, ls2 are the
    identity without layer scale.  ``post_norm``: x <- x + LN1(Attn(x)), then x <- x + LN2(MLP(x))
    (timm's ``ResPostBlock``).

    GTP and ToMe subclass it (``gtp_ref.model.GTPBlock``, ``gtp_ref.tome.ToMeBlock``) and put
    their token reduction between the two halves (``attn_in`` / ``attn_add``, then ``mlp_add``);
    the parameters are the same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 init_values: float | None = None, norm_eps: float = LN_EPS, norm: str = "layernorm",
                 act: str = "gelu", mlp: str = "mlp", mlp_norm: bool = False, mlp_bias: bool = True,
                 mlp_layer_scale: bool = True, post_norm: bool = False, **attention: Any) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = norm_layer(norm, dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, norm=norm, norm_eps=norm_eps, **attention)
        self.ls1 = nn.Identity() if init_values is None else LayerScale(dim, init_values)
        self.norm2 = norm_layer(norm, dim, norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = mlp_layer(mlp, dim, hidden, act, norm_layer(norm, hidden, norm_eps) if mlp_norm else None, mlp_bias)
        self.ls2 = nn.Identity() if init_values is None or not mlp_layer_scale else LayerScale(dim, init_values)

    def attn_in(self, x: Tensor) -> Tensor:
        """The attention's input: LN1 x (pre-norm) or x (post-norm)."""
        return x if self.post_norm else self.norm1(x)

    def attn_add(self, x: Tensor, out: Tensor) -> Tensor:
        """The residual of the attention's output: x + ls1(out) (pre-norm) or x + LN1(out) (post-norm)."""
        return x + (self.norm1(out) if self.post_norm else self.ls1(out))

    def mlp_add(self, x: Tensor) -> Tensor:
        """The MLP half: x + ls2(MLP(LN2 x)) (pre-norm) or x + LN2(MLP(x)) (post-norm)."""
        return x + (self.norm2(self.mlp(x)) if self.post_norm else self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: Tensor, fused: bool = False, rope: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        x = self.attn_add(x, self.attn(self.attn_in(x), fused=fused, rope=rope, bias=bias)[0])  # (B, N, C)
        return self.mlp_add(x)


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
    ``global_pool="avg"`` averages the image tokens, ``"map"`` pools them by attention
    (``gtp_ref.layers.AttentionPool``: ``pool_heads`` heads, an MLP of ``pool_mlp_ratio``
    times the width, q / kv biases by ``pool_qkv_bias``; the blocks' by default); ``pool_prefix``
    pools the prefix
    tokens too.  With a
    distillation token the logits are the mean of ``head`` on [CLS] and ``head_dist`` on the
    distillation token (timm's inference).  ``fused_attn`` chooses ``scaled_dot_product_attention`` (timm's default) over
    the explicit softmax attention.

    The variants of timm's EVA family: ``mlp`` the MLP's kind ("mlp", "swiglu", "glu"),
    ``mlp_norm`` a norm of its hidden units, ``mlp_bias`` its biases, ``mlp_layer_scale=False``
    layer scale on the attention only; the attention's ``qkv_fused``, ``k_bias``,
    ``qk_norm``, ``attn_norm``, ``proj_bias`` (``Attention``); ``pos_embed=False`` no learned
    position embedding; ``rope`` rotary position embeddings in the layout "interleaved" or
    "half", from the buffer ``rope_table`` [L, H, n, 2 d] (L = H = 1 unless ``rope_mixed``: one
    table per block and head), by default an axial 2-D table (``gtp_ref.layers.axial_rope_table``;
    ``from_timm`` puts the timm model's own there).  A hybrid ViT: ``stem`` (a module from images
    to a feature map of ``stem_channels`` channels, ``stem_stride`` times smaller) before the
    patch projection; the grid of tokens is then that of the feature map's patches.
    ``attn_bias``: a relative-position bias of each block's logits, the buffer
    ``attn_bias_table`` [L, H, N, N] (zeros unless ``from_timm`` copies a timm model's).
    ``post_norm``: post-norm blocks (``Block``); ``kv_heads``: grouped-query attention (an int,
    or one per block);
    ``patch_proj=False``: a stem whose feature map is the tokens; ``allow_remainder``: an image size
    that is no multiple of the patch (the last pixels are not seen, as in timm).
    """

    block_class: type[Block] = Block  # the token-reduction models put their own block here

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 global_pool: str = "token", fused_attn: bool = False, *, reg_tokens: int = 0,
                 no_embed_class: bool = False, pre_norm: bool = False, fc_norm: bool | None = None,
                 init_values: float | None = None, norm_eps: float = LN_EPS, patch_bias: bool = True,
                 norm: str = "layernorm", act: str = "gelu", final_norm: bool = True, embed_norm: bool = False,
                 dist_token: bool = False, mlp: str = "mlp", mlp_norm: bool = False, qkv_fused: bool = True,
                 k_bias: bool = True, qk_norm: bool = False, attn_norm: bool = False, proj_bias: bool = True,
                 pos_embed: bool = True, rope: str | None = None, rope_mixed: bool = False,
                 pool_heads: int | None = None, pool_prefix: bool = False, pool_mlp_ratio: float | None = None,
                 mlp_bias: bool = True, mlp_layer_scale: bool = True, stem: nn.Module | None = None,
                 stem_channels: int = 0, stem_stride: int = 1, attn_bias: bool = False, post_norm: bool = False,
                 kv_heads: int | list[int] | None = None, patch_proj: bool = True, allow_remainder: bool = False,
                 pool_qkv_bias: bool | None = None) -> None:
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
        choice("mlp", mlp, MLPS)
        options = {name: flag(name, value) for name, value in (("qkv_fused", qkv_fused), ("k_bias", k_bias),
                   ("qk_norm", qk_norm), ("attn_norm", attn_norm), ("proj_bias", proj_bias), ("post_norm", post_norm))}
        kv = [None] * depth  # grouped-query attention: k and v of fewer heads, each shared by a group of q heads
        if kv_heads is not None:
            kv = list(kv_heads) if isinstance(kv_heads, (list, tuple)) else [kv_heads] * depth
            if len(kv) != depth:
                raise ValueError(f"kv_heads has {len(kv)} entries; give one int or one per block ({depth})")
            kv = [integer("kv_heads", h, 1) for h in kv]
            if qkv_fused or any(num_heads % h for h in kv):
                raise ValueError(f"kv_heads={kv_heads} needs separate projections (qkv_fused=False) and to divide "
                                 f"num_heads={num_heads}")
        mlp_norm, pos_embed = flag("mlp_norm", mlp_norm), flag("pos_embed", pos_embed)
        rope_mixed = flag("rope_mixed", rope_mixed)
        mlp_bias, mlp_layer_scale = flag("mlp_bias", mlp_bias), flag("mlp_layer_scale", mlp_layer_scale)
        pool_mlp_ratio = mlp_ratio if pool_mlp_ratio is None else real("pool_mlp_ratio", pool_mlp_ratio, 0.0, low_open=True)
        if rope is not None:
            choice("rope", rope, ROPE_LAYOUTS)
        pool_heads = num_heads if pool_heads is None else integer("pool_heads", pool_heads, minimum=1)
        self.pool_prefix = flag("pool_prefix", pool_prefix)
        if global_pool == "map" and embed_dim % pool_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by pool_heads={pool_heads}")
        fc_norm = global_pool == "avg" if fc_norm is None else flag("fc_norm", fc_norm)
        if dist_token and (not class_token or global_pool != "token"):
            raise ValueError("dist_token=True (distilled DeiT) needs class_token=True and global_pool='token'")
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"patch_size={patch_size!r} must be square (timm's PatchEmbed)")
        if stem is not None:  # the patches are cut from the stem's feature map
            stem_channels, stem_stride = integer("stem_channels", stem_channels, 1), integer("stem_stride", stem_stride, 1)
        if not flag("patch_proj", patch_proj) and (stem is None or stem_channels != embed_dim or patch_size[0] != 1):
            raise ValueError("patch_proj=False (the stem's map is the tokens) needs a stem of embed_dim channels and "
                             "patch_size=1")
        stride = patch_size[0] * (stem_stride if stem is not None else 1)  # image pixels per token, each way
        if (img_size[0] % stride or img_size[1] % stride) and not flag("allow_remainder", allow_remainder):
            raise ValueError(f"img_size={img_size!r} is not divisible by {'the stem stride x ' if stem else ''}"
                             f"patch_size={stride} (allow_remainder=True ignores the pixels beyond the last whole "
                             "patch, as timm's convolution does)")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio!r} gives an MLP of int({embed_dim} * {mlp_ratio}) = 0 "
                             "hidden units; need at least 1")
        if not class_token and global_pool == "token":
            raise ValueError("global_pool='token' needs a [CLS] token (class_token=True); "
                             "use global_pool='avg'")
        self.grid = (img_size[0] // stride, img_size[1] // stride)
        self.img_size, self.in_chans = img_size, in_chans
        self.class_token, self.global_pool, self.fused_attn = class_token, global_pool, fused_attn
        self.num_prefix_tokens = int(class_token) + int(dist_token) + reg_tokens
        self.no_embed_class = no_embed_class
        n = self.grid[0] * self.grid[1]

        self.patch_embed = PatchEmbed(stem_channels if stem is not None else in_chans, embed_dim, patch_size[0],
                                      patch_bias, norm_layer(norm, embed_dim, norm_eps) if embed_norm else None, stem,
                                      patch_proj)
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim))
        embed_len = n if no_embed_class else n + self.num_prefix_tokens
        if pos_embed:
            self.pos_embed = nn.Parameter(torch.randn(1, embed_len, embed_dim) * 0.02)
        self.rope, self.attn_bias = rope, flag("attn_bias", attn_bias)
        if self.attn_bias:  # one relative-position bias of the logits per block: (L, H, N, N), N with the prefix
            N0 = n + self.num_prefix_tokens
            self.register_buffer("attn_bias_table", torch.zeros(depth, num_heads, N0, N0))
        if rope is not None:
            table = axial_rope_table(self.grid, embed_dim // num_heads)  # (n, 2 d)
            shape = (depth, num_heads) if rope_mixed else (1, 1)
            self.register_buffer("rope_table", table.expand(*shape, *table.shape).clone())  # (L, H, n, 2 d)
        self.norm_pre = norm_layer(norm, embed_dim, norm_eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(self.block_class(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_eps,
                                                     norm, act, mlp, mlp_norm, mlp_bias, mlp_layer_scale, rope=rope,
                                                     kv_heads=kv[l], **options)
                                    for l in range(depth))
        self.norm = norm_layer(norm, embed_dim, norm_eps) if final_norm and not fc_norm else nn.Identity()
        self.fc_norm = norm_layer(norm, embed_dim, norm_eps) if final_norm and fc_norm else nn.Identity()
        if global_pool == "map":  # attention pooling, its MLP of the blocks' kind and activation
            pool_bias = qkv_bias if pool_qkv_bias is None else flag("pool_qkv_bias", pool_qkv_bias)
            self.attn_pool = AttentionPool(embed_dim, pool_heads, pool_mlp_ratio, act,
                                           norm_layer(norm, embed_dim, norm_eps), qkv_bias=pool_bias)
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
        dtype = next(self.patch_embed.parameters()).dtype
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
        pos = getattr(self, "pos_embed", None)
        if pos is None:
            x = torch.cat([*prefix, x], dim=1)  # (B, N, C)
        elif self.no_embed_class:  # the position embedding covers the image tokens only
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.norm_pre(x)

    def bias_for(self, block: int, positions: Tensor | None = None) -> Tensor | None:
        """Block ``block``'s relative-position bias among the prefix tokens and the image tokens at
        ``positions`` [B, n_l] (None: all, in order) -> [B or 1, H, N_l, N_l]; None without one."""
        if not self.attn_bias:
            return None
        table = self.attn_bias_table[block]  # (H, N0, N0)
        if positions is None:
            return table[None]
        c = self.num_prefix_tokens
        index = torch.cat([torch.arange(c, device=positions.device).expand(positions.shape[0], c), c + positions], 1)
        return table[:, index[:, :, None], index[:, None, :]].transpose(0, 1)  # (B, H, N_l, N_l)

    def rope_for(self, block: int, positions: Tensor | None = None) -> Tensor | None:
        """Block ``block``'s RoPE rows for the image tokens at ``positions`` [B, n_l] (their patches'
        indices; None: all n patches in order) -> [B or 1, H or 1, n_l, 2 d]; None without rope."""
        if self.rope is None:
            return None
        table = self.rope_table[block if self.rope_table.shape[0] > 1 else 0]  # (H or 1, n, 2 d)
        if positions is None:
            return table[None]
        return table[:, positions].transpose(0, 1)  # (B, H or 1, n_l, 2 d)

    def forward_head(self, x: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        """The tokens after the last block [B, N_L, C] (with their sizes [B, N_L] or None) -> logits [B, num_classes]."""
        x = self.norm(x)  # (B, N_L, C); the identity with fc_norm
        if hasattr(self, "dist_token"):  # distilled DeiT: the mean of the two heads' logits (timm's inference)
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        c = 0 if self.pool_prefix else self.num_prefix_tokens  # the tokens pooled start at c
        if self.global_pool == "map":
            pooled = self.attn_pool(x[:, c:], None if token_sizes is None else token_sizes[:, c:])
        elif self.global_pool == "avg":  # plain mean of the tokens
            pooled = x[:, c:].mean(dim=1)  # (B, C)
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
        for l, block in enumerate(self.blocks):
            x = block(x, self.fused_attn, self.rope_for(l), self.bias_for(l))
        return self.forward_head(x)
