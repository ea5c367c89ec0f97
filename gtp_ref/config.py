"""The backbone as one value: ``ViTConfig``, a frozen description of a ViT made of small parts.

Every ViT of this project -- the plain backbone, GTP's and ToMe's, the presets, a model that
``from_timm`` converts -- is built from a ``ViTConfig``, and the cost model (``complexity``) counts
the same value.  Each field is one line with its comment; ``ViTConfig`` checks every field and the
rules between them in one place (``__post_init__``), so a config that exists is a model that can
be built.  No torch: the cost model imports this module without it.

The fields carry timm's names (``img_size``, ``num_heads``, ``qkv_bias``, ``init_values``,
``global_pool``, ...), each name in one part only, so ``ViTConfig.of(**fields)`` and
``config.replace(**fields)`` take them flat::

    ViTConfig.of(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)
    PRESETS["deit_small"].replace(num_classes=100)

The defaults are timm's plain pre-norm ``VisionTransformer`` (ViT-B/16, DeiT-B).
"""

from dataclasses import dataclass, field, fields, replace
from typing import Any

from gtp_ref.validate import choice, flag, integer, pair, real

NORMS = ("layernorm", "rmsnorm")  # the kinds of norm, one for the whole model (timm's LayerNorm, RmsNorm)
# the MLP's: exact GELU, tanh-approximated GELU, CLIP's QuickGELU
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
# fc1 -> act -> fc2; SiLU(fc1_g x) * fc1_x x (SwiGLU); one fc1, SiLU(first half) * second
MLPS = ("mlp", "swiglu", "glu")
# which channels a rotation pairs: (0, 1), (2, 3), ... or (i, i + d / 2)
ROPE_LAYOUTS = ("interleaved", "half")
GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map")  # [CLS]; mean, max, their mean; attention
POOLERS = ("tanh",)  # the activations of a pooler's dense layer
FINAL_NORMS = ("norm", "fc_norm", "none")  # the final norm before pooling (norm), after it (fc_norm), or none
LN_EPS = 1e-6  # the DeiT / ViT factories' LayerNorm eps


@dataclass(frozen=True)
class PatchConfig:
    """The image and its patches: [B, in_chans, H, W] -> [B, n, C] (timm's PatchEmbed / HybridEmbed)."""

    img_size: tuple[int, int] = (224, 224)  # (H, W) in pixels; an int is a square image
    patch_size: int = 16  # the side of a (square) patch, in pixels of the image or of the stem's map
    in_chans: int = 3  # the image's channels
    patch_bias: bool = True  # a bias in the patch projection (CLIP has none)
    embed_norm: bool = False  # a norm of each token after the projection (AIMv2)
    patch_proj: bool = True  # a patch projection; False: the stem's feature map is the tokens
    stem_channels: int = 0  # a hybrid ViT's convolutional stem: its feature map's channels; 0: no stem
    stem_stride: int = 1  # how many times smaller than the image the stem's map is
    allow_remainder: bool = False  # an image size that is no multiple of the patch: the last pixels unseen


@dataclass(frozen=True)
class PrefixConfig:
    """The tokens before the image tokens, in this order; GTP and ToMe never reduce them."""

    class_token: bool = True  # a [CLS] token
    dist_token: bool = False  # a distillation token (distilled DeiT)
    reg_tokens: int = 0  # register tokens


@dataclass(frozen=True)
class PositionConfig:
    """Where each token is: a learned embedding, rotary embeddings, relative-position biases."""

    pos_embed: bool = True  # a learned position embedding added to the tokens
    no_embed_class: bool = False  # ... to the image tokens only, not to the prefix tokens
    rope: str | None = None  # rotary embeddings of the image tokens' q and k, in this layout (ROPE_LAYOUTS)
    rope_mixed: bool = False  # one RoPE table per block and head (timm's mixed RoPE), else one for all
    attn_bias: bool = False  # a relative-position bias added to every block's logits (BEiT, RelPos)


@dataclass(frozen=True)
class AttentionConfig:
    """Each block's multi-head self-attention (timm's Attention, EvaAttention, AttentionRope)."""

    num_heads: int = 12  # query heads
    qkv_bias: bool = True  # biases on q, k and v
    qkv_fused: bool = True  # one qkv projection; False: q_proj, k_proj, v_proj
    k_bias: bool = True  # a bias on k (False with qkv_bias: EVA's q / v biases only)
    qk_norm: bool = False  # a norm of each head's q and k
    attn_norm: bool = False  # a norm of the heads' output before the projection
    proj_bias: bool = True  # a bias on the output projection
    kv_heads: tuple[int, ...] | None = None  # grouped-query attention: k / v heads per block (or one int)


@dataclass(frozen=True)
class MLPConfig:
    """Each block's MLP."""

    mlp_kind: str = "mlp"  # one of MLPS
    mlp_ratio: float = 4.0  # hidden units = int(embed_dim * mlp_ratio)
    act: str = "gelu"  # the plain MLP's activation, one of ACTIVATIONS (the gated MLPs use SiLU)
    mlp_norm: bool = False  # a norm of the hidden units
    mlp_bias: bool = True  # biases on its linear layers


@dataclass(frozen=True)
class NormConfig:
    """Every norm of the model: one kind and eps, and which of the optional norms exist."""

    norm_kind: str = "layernorm"  # one of NORMS
    norm_eps: float = LN_EPS
    pre_norm: bool = False  # a norm before the first block (norm_pre, CLIP)
    final_norm: str | None = None  # one of FINAL_NORMS; None: fc_norm for average pooling, else norm (timm's)


@dataclass(frozen=True)
class BlockConfig:
    """How a block adds its two halves to the residual stream."""

    post_norm: bool = False  # x + norm(f(x)) (timm's ResPostBlock) instead of x + f(norm(x))
    init_values: float | None = None  # layer scale's initial value (DeiT-III, EVA); None: no layer scale
    mlp_layer_scale: bool = True  # layer scale on the MLP half too (False: on the attention only)


@dataclass(frozen=True)
class HeadConfig:
    """Pooling and the classifier."""

    num_classes: int = 1000  # 0: no classifier, the pooled features are the output
    global_pool: str = "token"  # one of GLOBAL_POOLS
    pool_prefix: bool = False  # average / attention pooling over the prefix tokens too
    pool_heads: int | None = None  # attention pooling's heads; None: the blocks'
    pool_mlp_ratio: float | None = None  # attention pooling's MLP width over embed_dim; None: the blocks'
    pool_qkv_bias: bool | None = None  # attention pooling's q / kv biases; None: the blocks' qkv_bias
    pooler: str | None = None  # a dense layer and this activation after pooling ("tanh": HF's ViTPooler)
    head_bias: bool = True  # a bias in the classifier (False: CLIP's visual projection)


PARTS = {
    "patches": PatchConfig,
    "prefix": PrefixConfig,
    "positions": PositionConfig,
    "attention": AttentionConfig,
    "mlp": MLPConfig,
    "norm": NormConfig,
    "block": BlockConfig,
    "head": HeadConfig,
}
# a part's field -> the part: every field name belongs to one part, so configs take them flat
OWNER = {f.name: part for part, cls in PARTS.items() for f in fields(cls)}


@dataclass(frozen=True)
class ViTConfig:
    """A ViT's architecture.  Checked when made (``TypeError`` / ``ValueError`` naming the field,
    its value and what is valid) and normalised (``img_size`` a pair, ``kv_heads`` one per block)."""

    embed_dim: int = 768  # C, the tokens' width
    depth: int = 12  # L, the blocks
    patches: PatchConfig = field(default_factory=PatchConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    positions: PositionConfig = field(default_factory=PositionConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    name: str = "ViT"  # a label for tables and figures

    def __post_init__(self) -> None:
        for part, cls in PARTS.items():
            if not isinstance(getattr(self, part), cls):
                raise TypeError(
                    f"{part} must be a gtp_ref.config.{cls.__name__}, got "
                    f"{type(getattr(self, part)).__name__}"
                )
        C, L = integer("embed_dim", self.embed_dim, minimum=1), integer("depth", self.depth, minimum=1)
        attention = _checked_attention(self.attention, C, L)
        checked = dict(
            embed_dim=C,
            depth=L,
            patches=_checked_patches(self.patches, C),
            prefix=_checked_prefix(self.prefix),
            positions=_checked_positions(self.positions),
            attention=attention,
            mlp=_checked_mlp(self.mlp, C),
            norm=_checked_norm(self.norm),
            block=_checked_block(self.block),
            head=_checked_head(self.head, C, attention.num_heads),
        )
        for name, value in checked.items():  # normalised once, here: the value is frozen from now on
            object.__setattr__(self, name, value)
        if not isinstance(self.name, str):
            raise TypeError(f"name={self.name!r} must be a string")
        self._check_together()

    def _check_together(self) -> None:
        """The rules between the parts."""
        if not self.prefix.class_token and self.head.global_pool == "token":
            raise ValueError(
                "global_pool='token' needs a [CLS] token (class_token=True); use global_pool='avg'"
            )
        if self.prefix.dist_token and (not self.prefix.class_token or self.head.global_pool != "token"):
            raise ValueError(
                "dist_token=True (distilled DeiT) needs class_token=True and global_pool='token'"
            )
        if self.positions.rope is not None and self.head_dim % 2:
            raise ValueError(
                f"rope={self.positions.rope!r} turns pairs of channels: the heads' width "
                f"{self.head_dim} must be even"
            )

    # ---- sizes that follow ----
    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (h, w): the image tokens, row-major."""
        p = self.patches
        stride = p.patch_size * (p.stem_stride if p.stem_channels else 1)  # image pixels per token, each way
        return (p.img_size[0] // stride, p.img_size[1] // stride)

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.prefix.class_token) + int(self.prefix.dist_token) + self.prefix.reg_tokens

    @property
    def num_tokens(self) -> int:
        """N: the tokens entering the first block, the prefix tokens included."""
        return self.num_image_tokens + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention.num_heads

    @property
    def hidden(self) -> int:
        """The MLP's hidden units."""
        return int(self.embed_dim * self.mlp.mlp_ratio)

    @property
    def final_norm(self) -> str:
        """Where the final norm is: ``norm`` (before pooling), ``fc_norm`` (after) or ``none``."""
        if self.norm.final_norm is not None:
            return self.norm.final_norm
        return "fc_norm" if self.head.global_pool == "avg" else "norm"

    def kv_heads_of(self, block: int) -> int:
        """The k / v heads of block ``block`` (the query heads but for grouped-query attention)."""
        kv = self.attention.kv_heads
        return self.attention.num_heads if kv is None else kv[block]

    # ---- making configs ----
    @classmethod
    def of(cls, embed_dim: int = 768, depth: int = 12, name: str = "ViT", **fields_: Any) -> "ViTConfig":
        """A config from flat fields (each belongs to one part, ``OWNER``); the others default
        to timm's plain ViT."""
        return cls(embed_dim=embed_dim, depth=depth, name=name, **_parts(fields_))

    def replace(self, **changes: Any) -> "ViTConfig":
        """A copy with ``changes``: the config's own fields (``depth=2``) or its parts' (flat,
        ``num_classes=10``), checked anew."""
        own = {f.name for f in fields(self)} - set(PARTS)
        mine = {k: v for k, v in changes.items() if k in own}
        parts = _parts({k: v for k, v in changes.items() if k not in own}, self)
        return replace(self, **mine, **parts)

    def flat(self) -> dict[str, Any]:
        """Every field by name, flat (``ViTConfig.of(**config.flat())`` is the same config)."""
        out: dict[str, Any] = {"embed_dim": self.embed_dim, "depth": self.depth, "name": self.name}
        for part in PARTS:
            out.update({f.name: getattr(getattr(self, part), f.name) for f in fields(PARTS[part])})
        return out


def _parts(changes: dict[str, Any], base: ViTConfig | None = None) -> dict[str, Any]:
    """{part: the part with its fields in ``changes``} (parts of ``base``, or new ones)."""
    by_part: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if key not in OWNER:
            raise TypeError(
                f"{key}: not a field of ViTConfig (its fields: embed_dim, depth, name, {', '.join(OWNER)})"
            )
        by_part.setdefault(OWNER[key], {})[key] = value
    return {
        part: replace(getattr(base, part), **v) if base is not None else PARTS[part](**v)
        for part, v in by_part.items()
    }


# ---- the checks of each part, returning it normalised ---------------------------------------------
def _checked_patches(p: PatchConfig, C: int) -> PatchConfig:
    img_size, patch = pair("img_size", p.img_size), pair("patch_size", p.patch_size)
    if patch[0] != patch[1]:
        raise ValueError(f"patch_size={p.patch_size!r} must be square (timm's PatchEmbed)")
    stem_channels = integer("stem_channels", p.stem_channels, minimum=0)
    stem_stride = integer("stem_stride", p.stem_stride, minimum=1)
    patch_proj, remainder = flag("patch_proj", p.patch_proj), flag("allow_remainder", p.allow_remainder)
    if not patch_proj and (stem_channels != C or patch[0] != 1):
        raise ValueError(
            "patch_proj=False (the stem's map is the tokens) needs a stem of embed_dim channels "
            "(stem_channels) and patch_size=1"
        )
    stride = patch[0] * (stem_stride if stem_channels else 1)  # image pixels per token, each way
    if (img_size[0] % stride or img_size[1] % stride) and not remainder:
        raise ValueError(
            f"img_size={img_size!r} is not divisible by {'the stem stride x ' if stem_channels else ''}"
            f"patch_size={stride} (allow_remainder=True ignores the pixels beyond the last whole "
            "patch, as timm's convolution does)"
        )
    return PatchConfig(
        img_size=img_size,
        patch_size=patch[0],
        in_chans=integer("in_chans", p.in_chans, minimum=1),
        patch_bias=flag("patch_bias", p.patch_bias),
        embed_norm=flag("embed_norm", p.embed_norm),
        patch_proj=patch_proj,
        stem_channels=stem_channels,
        stem_stride=stem_stride,
        allow_remainder=remainder,
    )


def _checked_prefix(p: PrefixConfig) -> PrefixConfig:
    return PrefixConfig(
        class_token=flag("class_token", p.class_token),
        dist_token=flag("dist_token", p.dist_token),
        reg_tokens=integer("reg_tokens", p.reg_tokens, minimum=0),
    )


def _checked_positions(p: PositionConfig) -> PositionConfig:
    return PositionConfig(
        pos_embed=flag("pos_embed", p.pos_embed),
        no_embed_class=flag("no_embed_class", p.no_embed_class),
        rope=None if p.rope is None else choice("rope", p.rope, ROPE_LAYOUTS),
        rope_mixed=flag("rope_mixed", p.rope_mixed),
        attn_bias=flag("attn_bias", p.attn_bias),
    )


def _checked_attention(a: AttentionConfig, C: int, depth: int) -> AttentionConfig:
    H = integer("num_heads", a.num_heads, minimum=1)
    if C % H:
        raise ValueError(f"embed_dim={C} is not divisible by num_heads={H}")
    qkv_fused, kv = flag("qkv_fused", a.qkv_fused), None
    if a.kv_heads is not None:
        kv = tuple(a.kv_heads) if isinstance(a.kv_heads, (list, tuple)) else (a.kv_heads,) * depth
        if len(kv) != depth:
            raise ValueError(f"kv_heads has {len(kv)} entries; give one int or one per block ({depth})")
        kv = tuple(integer("kv_heads", h, minimum=1) for h in kv)
        if qkv_fused or any(H % h for h in kv):
            raise ValueError(
                f"kv_heads={a.kv_heads} needs separate projections (qkv_fused=False) and to divide "
                f"num_heads={H}"
            )
        kv = None if kv == (H,) * depth else kv
    return AttentionConfig(
        num_heads=H,
        qkv_bias=flag("qkv_bias", a.qkv_bias),
        qkv_fused=qkv_fused,
        k_bias=flag("k_bias", a.k_bias),
        qk_norm=flag("qk_norm", a.qk_norm),
        attn_norm=flag("attn_norm", a.attn_norm),
        proj_bias=flag("proj_bias", a.proj_bias),
        kv_heads=kv,
    )


def _checked_mlp(m: MLPConfig, C: int) -> MLPConfig:
    ratio = real("mlp_ratio", m.mlp_ratio, 0.0, low_open=True)
    if int(C * ratio) < 1:
        raise ValueError(
            f"mlp_ratio={ratio!r} gives an MLP of int({C} * {ratio}) = 0 hidden units; need at least 1"
        )
    return MLPConfig(
        mlp_kind=choice("mlp_kind", m.mlp_kind, MLPS),
        mlp_ratio=ratio,
        act=choice("act", m.act, ACTIVATIONS),
        mlp_norm=flag("mlp_norm", m.mlp_norm),
        mlp_bias=flag("mlp_bias", m.mlp_bias),
    )


def _checked_norm(n: NormConfig) -> NormConfig:
    return NormConfig(
        norm_kind=choice("norm_kind", n.norm_kind, NORMS),
        norm_eps=real("norm_eps", n.norm_eps, 0.0, low_open=True),
        pre_norm=flag("pre_norm", n.pre_norm),
        final_norm=None if n.final_norm is None else choice("final_norm", n.final_norm, FINAL_NORMS),
    )


def _checked_block(b: BlockConfig) -> BlockConfig:
    return BlockConfig(
        post_norm=flag("post_norm", b.post_norm),
        init_values=None if b.init_values is None else real("init_values", b.init_values),
        mlp_layer_scale=flag("mlp_layer_scale", b.mlp_layer_scale),
    )


def _checked_head(h: HeadConfig, C: int, heads: int) -> HeadConfig:
    pool = choice("global_pool", h.global_pool, GLOBAL_POOLS)
    pool_heads = None if h.pool_heads is None else integer("pool_heads", h.pool_heads, minimum=1)
    if pool == "map" and C % (pool_heads or heads):
        raise ValueError(f"embed_dim={C} is not divisible by pool_heads={pool_heads or heads}")
    return HeadConfig(
        num_classes=integer("num_classes", h.num_classes, minimum=0),
        global_pool=pool,
        pool_prefix=flag("pool_prefix", h.pool_prefix),
        pool_heads=pool_heads,
        pool_mlp_ratio=None
        if h.pool_mlp_ratio is None
        else real("pool_mlp_ratio", h.pool_mlp_ratio, 0.0, low_open=True),
        pool_qkv_bias=None if h.pool_qkv_bias is None else flag("pool_qkv_bias", h.pool_qkv_bias),
        pooler=None if h.pooler is None else choice("pooler", h.pooler, POOLERS),
        head_bias=flag("head_bias", h.head_bias),
    )


# ---- the paper's backbones (supplement Tables 1-2): the presets, counted by the cost model too ----
PRESETS = {
    "deit_tiny": ViTConfig.of(name="DeiT-Ti", embed_dim=192, depth=12, num_heads=3),
    "deit_small": ViTConfig.of(name="DeiT-S", embed_dim=384, depth=12, num_heads=6),
    "deit_base": ViTConfig.of(name="DeiT-B", embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTConfig.of(name="ViT-L/16", embed_dim=1024, depth=24, num_heads=16),
    # As the authors' code builds EVA-L (graph_propagation_eva_large_patch14_196): patch 14 at
    # 196 px, a [CLS] token, and the head averaging the image tokens (N = 197; the supplement's
    # C.4 counts N = 196, without the [CLS] token).
    "eva_large": ViTConfig.of(
        name="EVA-L", img_size=196, patch_size=14, embed_dim=1024, depth=24, num_heads=16, global_pool="avg"
    ),
}
