"""The ViT that GTP and ToMe plug into, in timm's layout, built from a ``gtp_ref.config.ViTConfig``.

Module names and parameter shapes are those of the timm model of the same architecture (timm's
``VisionTransformer``, ``Eva``, ``Beit``, ... as ``from_timm`` converts them), so
``load_state_dict`` takes timm / DeiT checkpoints unchanged; timm itself is not needed.  The
block's variants are classes: ``Block`` (pre-norm) and ``PostNormBlock``; GTP and ToMe subclass
both (``gtp_ref.model``, ``gtp_ref.tome``).
"""

import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from gtp_ref.attention import Attention
from gtp_ref.config import ViTConfig
from gtp_ref.layers import FOREIGN_KEYS, AttentionPool, LayerScale, axial_rope_table, mlp_layer, norm_layer
from gtp_ref.restore import Tokens, first_patches, start
from gtp_ref.validate import choice, flag, integer

OUTPUT_FORMATS = ("NCHW", "NLC")  # forward_intermediates' output_fmt, as timm's


class PatchEmbed(nn.Module):
    """[B, in_chans, H, W] -> [B, n, C], n = (H/p) (W/p), row-major over the patch grid; a norm of
    each token after the projection with ``embed_norm`` (AIMv2).  With a ``stem`` (a hybrid ViT's
    convolutional stem, any module from images to a feature map or a list ending in one) the
    patches are cut from its output; without ``patch_proj`` its map's pixels are the tokens."""

    def __init__(self, config: ViTConfig, stem: nn.Module | None = None) -> None:
        super().__init__()
        p = config.patches
        if stem is not None:
            self.backbone = stem
        channels = p.stem_channels if stem is not None else p.in_chans
        self.proj = (
            nn.Identity()
            if not p.patch_proj
            else nn.Conv2d(
                channels, config.embed_dim, kernel_size=p.patch_size, stride=p.patch_size, bias=p.patch_bias
            )
        )
        self.norm = norm_layer(config.norm, config.embed_dim) if p.embed_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "backbone"):
            x = self.backbone(x)
            x = x[-1] if isinstance(x, (list, tuple)) else x  # (B, in_chans, H', W')
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, n, C)


class Pooler(nn.Module):
    """tanh(dense(x)) of the pooled token: HF's ViTPooler (``config.head.pooler="tanh"``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x))


class Block(nn.Module):
    """A pre-norm block: x <- x + ls1(Attn(LN1 x)), then x <- x + ls2(MLP(LN2 x)); ls1, ls2 are the
    identity without layer scale (timm's ``Block``).

    Its three steps -- ``attn_in``, ``attn_add``, ``mlp_add`` -- are what a variant changes
    (``PostNormBlock``) and what GTP and ToMe put their token reduction between
    (``gtp_ref.model.GTPBlock``, ``gtp_ref.tome.ToMeBlock``); the parameters are the same.
    """

    def __init__(self, config: ViTConfig, block: int) -> None:
        super().__init__()
        C, init = config.embed_dim, config.block.init_values
        self.norm1 = norm_layer(config.norm, C)
        self.attn = Attention(config, kv_heads=config.kv_heads_of(block))
        self.ls1 = nn.Identity() if init is None else LayerScale(C, init)
        self.norm2 = norm_layer(config.norm, C)
        hidden_norm = norm_layer(config.norm, config.hidden) if config.mlp.mlp_norm else None
        self.mlp = mlp_layer(config.mlp, dim=C, hidden=config.hidden, norm=hidden_norm)
        self.ls2 = nn.Identity() if init is None or not config.block.mlp_layer_scale else LayerScale(C, init)

    def attn_in(self, x: Tensor) -> Tensor:
        """The attention's input: LN1 x."""
        return self.norm1(x)

    def attn_add(self, x: Tensor, out: Tensor) -> Tensor:
        """The attention's output added to the residual: x + ls1(out)."""
        return x + self.ls1(out)

    def mlp_add(self, x: Tensor) -> Tensor:
        """The MLP half: x + ls2(MLP(LN2 x))."""
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward(
        self, x: Tensor, fused_attn: bool = False, rope_rows: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        # (B, N, C)
        out, _ = self.attn(self.attn_in(x), fused_attn=fused_attn, rope_rows=rope_rows, bias=bias)
        return self.mlp_add(self.attn_add(x, out))


class PostNormBlock(Block):
    """A post-norm block: x <- x + LN1(Attn(x)), then x <- x + LN2(MLP(x)) (timm's ``ResPostBlock``);
    no layer scale."""

    def attn_in(self, x: Tensor) -> Tensor:
        return x

    def attn_add(self, x: Tensor, out: Tensor) -> Tensor:
        return x + self.norm1(out)

    def mlp_add(self, x: Tensor) -> Tensor:
        return x + self.norm2(self.mlp(x))


class ViT(nn.Module):
    """A ViT in timm's layout: [B, in_chans, H, W] -> logits [B, num_classes].

    ``config`` (``gtp_ref.config.ViTConfig``) is the architecture, every option of it with its
    comment there.  The tokens are the prefix tokens -- ``[CLS]``, a distillation token,
    register tokens, in that order -- then the image tokens of the patch grid, row-major.  A
    hybrid ViT's convolutional stem (``config.patches.stem_channels``) is a module the config
    cannot describe: ``stem``.  ``fused_attn`` runs ``scaled_dot_product_attention`` (timm's
    default) instead of the explicit softmax attention.
    """

    # the block class of each variant: the token-reduction models put their own here
    block_classes: dict[bool, type[Block]] = {False: Block, True: PostNormBlock}  # by config.block.post_norm

    def __init__(self, config: ViTConfig, *, stem: nn.Module | None = None, fused_attn: bool = False) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(
                f"config must be a gtp_ref.config.ViTConfig (ViTConfig.of(**fields) makes one from "
                f"timm's keywords), got {type(config).__name__}"
            )
        if (stem is None) != (config.patches.stem_channels == 0):
            raise ValueError(
                f"stem: a hybrid ViT's stem goes with stem_channels > 0 in its config, and only there "
                f"(stem_channels={config.patches.stem_channels}, stem {'given' if stem else 'None'})"
            )
        self.config = config
        self.fused_attn = fused_attn  # validated by the property
        C, L, c, n = config.embed_dim, config.depth, config.num_prefix_tokens, config.num_image_tokens
        prefix, positions = config.prefix, config.positions

        self.patch_embed = PatchEmbed(config, stem)
        if prefix.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        if prefix.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, C))
        if prefix.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, prefix.reg_tokens, C))
        if positions.pos_embed:
            self.pos_embed = nn.Parameter(torch.randn(1, n if positions.no_embed_class else n + c, C) * 0.02)
        # one relative-position bias of the logits per block: (L, H, N, N), prefix first
        if positions.attn_bias:
            self.register_buffer("attn_bias_table", torch.zeros(L, config.attention.num_heads, n + c, n + c))
        if positions.rope is not None:  # a default axial table; from_timm copies the timm model's own
            table = axial_rope_table(config.grid, config.head_dim)  # (n, 2 d)
            shape = (L, config.attention.num_heads) if positions.rope_mixed else (1, 1)
            self.register_buffer("rope_table", table.expand(*shape, *table.shape).clone())  # (L, H, n, 2 d)
        self.norm_pre = norm_layer(config.norm, C) if config.norm.pre_norm else nn.Identity()
        block_class = self.block_classes[config.block.post_norm]
        self.blocks = nn.ModuleList(block_class(config, block=l) for l in range(L))
        final = config.final_norm
        self.norm = norm_layer(config.norm, C) if final == "norm" else nn.Identity()
        self.fc_norm = norm_layer(config.norm, C) if final == "fc_norm" else nn.Identity()
        if config.head.global_pool == "map":  # attention pooling, its MLP of the blocks' kind and activation
            self.attn_pool = AttentionPool(config)
        if config.head.pooler is not None:  # HF's ViTPooler: a dense layer and tanh on the pooled token
            self.pooler = Pooler(C)
        classes, bias = config.head.num_classes, config.head.head_bias
        self.head = nn.Linear(C, classes, bias=bias) if classes > 0 else nn.Identity()
        if prefix.dist_token:
            self.head_dist = nn.Linear(C, classes, bias=bias) if classes > 0 else nn.Identity()
        self.dropout_not_applied: tuple[
            str, ...
        ] = ()  # from_timm: the timm model's dropout, which this lacks

    # ---- what the config says, under the names timm's models have ----
    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    @property
    def num_classes(self) -> int:
        return self.config.head.num_classes

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
        want = (self.config.patches.in_chans, *self.config.patches.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, want))}], got {list(x.shape)}")
        dtype = next(self.patch_embed.parameters()).dtype
        if x.dtype != dtype:
            model = f" or the model (model.to({x.dtype}))" if x.is_floating_point() else ""
            raise TypeError(
                f"the input has dtype {x.dtype}, the model's parameters {dtype}: convert the images "
                f"(x.to({dtype})){model} so that they match"
            )

    def train(self, mode: bool = True) -> "ViT":
        """``nn.Module.train``; warns when the model was converted from a timm model that applies
        dropout or drop path in training mode (``dropout_not_applied``): this model applies none."""
        if mode and getattr(self, "dropout_not_applied", None):
            warnings.warn(
                f"training mode: this model applies no dropout or drop path, which the timm model it was "
                f"converted from applies in training mode ({', '.join(self.dropout_not_applied)})",
                stacklevel=2,
            )
        return super().train(mode)

    def __prepare_scriptable__(self) -> "ViT":
        """``torch.jit.script`` cannot compile these models (data-dependent token counts, dataclass
        traces, backends as objects): say so, and what works instead."""
        raise TypeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script; use torch.compile(model) "
            "(fullgraph=True with the dense and fast backends) or torch.export.export(model, (x,))"
        )

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding, prefix tokens, position embedding, norm_pre: [B, in_chans, H, W] -> [B, N, C]."""
        self.check_input(x)
        x = self.patch_embed(x)  # (B, n, C)
        prefix = [
            t.expand(x.shape[0], -1, -1)
            for t in (
                getattr(self, "cls_token", None),
                getattr(self, "dist_token", None),
                getattr(self, "reg_token", None),
            )
            if t is not None
        ]
        pos = getattr(self, "pos_embed", None)
        if pos is None:
            x = torch.cat([*prefix, x], dim=1)  # (B, N, C)
        elif self.config.positions.no_embed_class:  # the position embedding covers the image tokens only
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.norm_pre(x)

    def bias_for(self, block: int, patches: Tensor | None = None) -> Tensor | None:
        """Block ``block``'s relative-position bias among the prefix tokens and the image tokens that
        started as ``patches`` [B, n_l] (None: all, in order) -> [B or 1, H, N_l, N_l]; None without one."""
        if not self.config.positions.attn_bias:
            return None
        table = self.attn_bias_table[block]  # (H, N0, N0)
        if patches is None:
            return table[None]
        c = self.num_prefix_tokens
        index = torch.cat(
            [torch.arange(c, device=patches.device).expand(patches.shape[0], c), c + patches], 1
        )
        return table[:, index[:, :, None], index[:, None, :]].transpose(0, 1)  # (B, H, N_l, N_l)

    def rope_rows_for(self, block: int, patches: Tensor | None = None) -> Tensor | None:
        """Block ``block``'s RoPE table rows for the image tokens that started as ``patches`` [B, n_l]
        (None: all n patches in order) -> [B or 1, H or 1, n_l, 2 d]; None without RoPE."""
        if self.config.positions.rope is None:
            return None
        table = self.rope_table[block if self.rope_table.shape[0] > 1 else 0]  # (H or 1, n, 2 d)
        if patches is None:
            return table[None]
        return table[:, patches].transpose(0, 1)  # (B, H or 1, n_l, 2 d)

    def forward_head(self, x: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        """The tokens after the last block [B, N_L, C] (with their sizes [B, N_L] or None) -> logits
        [B, num_classes]."""
        x = self.norm(x)  # (B, N_L, C); the identity with fc_norm
        # distilled DeiT: the mean of the two heads' logits (timm's inference)
        if hasattr(self, "dist_token"):
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        c = 0 if self.config.head.pool_prefix else self.num_prefix_tokens  # the tokens pooled start at c
        pool = self.config.head.global_pool
        if pool == "map":
            pooled = self.attn_pool(x[:, c:], None if token_sizes is None else token_sizes[:, c:])
        elif pool == "avg":  # plain mean of the tokens
            pooled = x[:, c:].mean(dim=1)  # (B, C)
        elif pool == "max":
            pooled = x[:, c:].amax(dim=1)
        elif pool == "avgmax":  # timm's: the mean of the two
            pooled = 0.5 * (x[:, c:].amax(dim=1) + x[:, c:].mean(dim=1))
        else:
            pooled = x[:, 0]  # [CLS]
        pooled = self.fc_norm(pooled)
        if hasattr(self, "pooler"):
            pooled = self.pooler(pooled)
        return self.head(pooled)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
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
                    raise ValueError(
                        f"state_dict has {key!r}: {feature}, which this model was not built with"
                    )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        x = self.embed(x)  # (B, N, C)
        for l, block in enumerate(self.blocks):
            x = block(x, self.fused_attn, self.rope_rows_for(l), self.bias_for(l))
        return self.forward_head(x)

    # ---- tokens and dense features (docs/features.md); the reduced models override forward_blocks ----
    def forward_blocks(
        self, x: Tensor, *, restore: bool = False, take: Collection[int] = (), stop: int | None = None
    ) -> tuple[Tokens, list[Tokens]]:
        """The blocks on images x (up to block ``stop``, 0-based; None: all): the Tokens after the
        last one run, before the final norm, and those after each block in ``take``; with
        ``restore``, each with its restore map (``gtp_ref.restore``; here the identity)."""
        x = self.embed(x)  # (B, N, C)
        c, patches = self.num_prefix_tokens, first_patches(x, self.num_prefix_tokens)
        R = start(x, self.num_image_tokens) if restore else None
        taken = []
        for l, block in enumerate(self.blocks):
            if stop is not None and l > stop:
                break
            x = block(x, self.fused_attn, self.rope_rows_for(l), self.bias_for(l))
            if l in take:
                taken.append(Tokens(x, patches, x.new_ones(x.shape[:2]), c, self.grid, R))
        return Tokens(x, patches, x.new_ones(x.shape[:2]), c, self.grid, R), taken

    def forward_features(self, x: Tensor) -> Tensor:
        """timm's ``forward_features``: the tokens after the last block and the final norm (the
        identity where the model pools before an ``fc_norm``), [B, N_L, C] -- the prefix tokens,
        then the image tokens that remain."""
        return self.norm(self.forward_blocks(x)[0].tokens)

    def forward_tokens(self, x: Tensor, *, restore: bool = False) -> Tokens:
        """``forward_features`` with where each token came from (``gtp_ref.restore.Tokens``): the
        patch each token started as, its size and, with ``restore=True``, the restore map that
        ``Tokens.to_grid`` applies."""
        tokens, _ = self.forward_blocks(x, restore=restore)
        return replace(tokens, tokens=self.norm(tokens.tokens))

    def forward_dense(self, x: Tensor) -> Tensor:
        """The final features on the full patch grid, [B, C, h, w]: ``forward_features``' image
        tokens restored by the rule of docs/spec.md ("Tokens and dense features")."""
        return self.forward_tokens(x, restore=True).to_grid()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """timm's ``forward_intermediates``: the outputs of the blocks ``indices`` (an int n: the
        last n; a list: those blocks, negative from the end; None: all), each restored to the full
        patch grid -- [B, C, h, w] (``output_fmt="NCHW"``) or [B, h w, C] ("NLC") -- and, with
        ``return_prefix_tokens``, paired with its prefix tokens [B, c, C] (where the model has
        any).  ``norm`` applies the final norm to them first; ``stop_early`` runs no block after
        the last one asked for.  Returns the list (``intermediates_only``) or (the final tokens,
        normed, [B, N_L, C], the list)."""
        take = take_indices(len(self.blocks), indices)
        choice("output_fmt", output_fmt, OUTPUT_FORMATS)
        return_prefix_tokens, norm = flag("return_prefix_tokens", return_prefix_tokens), flag("norm", norm)
        stop_early, intermediates_only = (
            flag("stop_early", stop_early),
            flag("intermediates_only", intermediates_only),
        )
        last, taken = self.forward_blocks(x, restore=True, take=take, stop=max(take) if stop_early else None)
        out: list[Any] = []
        for t in taken:
            t = replace(t, tokens=self.norm(t.tokens)) if norm else t
            spatial = t.to_grid() if output_fmt == "NCHW" else t.restored()
            out.append((spatial, t.prefix) if return_prefix_tokens and t.num_prefix_tokens else spatial)
        return out if intermediates_only else (self.norm(last.tokens), out)


def take_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """The blocks ``forward_intermediates`` returns, as timm's ``feature_take_indices``: None, all;
    an int n, the last n (1 <= n <= depth); a sequence, those (-depth <= i < depth), ascending."""
    if indices is None:
        return list(range(depth))
    if not isinstance(indices, Sequence):
        count = integer("indices", indices, minimum=1, maximum=depth)
        return list(range(depth - count, depth))
    if isinstance(indices, str) or not indices:
        raise ValueError(
            f"indices must be an int, a non-empty sequence of block indices or None, got {indices!r}"
        )
    blocks = [integer("indices", i, minimum=-depth, maximum=depth - 1) % depth for i in indices]
    return sorted(set(blocks))
