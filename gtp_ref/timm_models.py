"""GTP and ToMe on your own timm model: ``from_timm(model, **gtp_settings)`` and ``tome_from_timm``.

Both read the geometry and the weights of a timm ``VisionTransformer``,
``VisionTransformerDistilled``, ``VisionTransformerRelPos``, ``Eva``, ``Beit`` or ``NaFlexVit``
*instance* and return a ``GTPViT`` / ``ToMeViT`` with the same weights, on the same device and in
the same dtype.  The model is checked module by module -- not by its state_dict keys, which a different
architecture can share (a post-norm ViT has a pre-norm ViT's keys) -- and anything this
project's backbone cannot represent is refused with a ValueError naming it.

Supported (docs/timm.md has the matrix and the timm versions tested): pre- and post-norm blocks
with timm's Attention, EvaAttention, AttentionRope or RelPosAttention (fused or separate q / k /
v, q / v biases, grouped-query k / v, q / k and output norms) and an Mlp, SwiGLU or GluMlp (GELU,
tanh GELU, QuickGELU; with or without biases and a hidden norm); layer scale; [CLS], register and
distillation tokens; learned, rotary (RoPE tables) or no absolute position embedding;
relative-position biases (as tables for the model's grid); token, average or attention (``map``)
pooling; LayerNorm or RmsNorm; plain, hybrid and NaFlex patch embeddings
(``gtp_ref.timm_embeddings``).  Refused: parallel blocks, windowed (SAM) and differential
attention, ``max`` pooling, and the rarer parts each check names.  ToMe also refuses register
and distillation tokens (the official ToMe protects only the [CLS] token), RoPE and
relative-position biases (a merged token has no one position).
``python -m gtp_ref.apps.support`` counts what converts among timm's registered models.

timm itself is not imported here: the model passed in is the user's, so timm is already loaded.
"""

import copy
import sys
from typing import Any

import torch
from torch import nn

from gtp_ref.config import GLOBAL_POOLS, LN_EPS, ViTConfig
from gtp_ref.convert import Backbone, build, stochastic_modules
from gtp_ref.model import GTPViT
from gtp_ref.timm_embeddings import naflex_embedding, naflex_state_dict, patch_embedding, stem_of
from gtp_ref.timm_embeddings import name_of as _name
from gtp_ref.timm_embeddings import norm_kind as _norm
from gtp_ref.tome import ToMeViT
from gtp_ref.vit import ViT

TIMM_ACTIVATIONS = {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}  # timm's activation modules


def _activation(act: nn.Module, where: str) -> str:
    """The backbone's name of an MLP activation: exact or tanh GELU, QuickGELU; ValueError otherwise."""
    name = _name(act)
    if name == "GELU":
        return "gelu" if getattr(act, "approximate", "none") == "none" else "gelu_tanh"
    if name in TIMM_ACTIVATIONS:
        return TIMM_ACTIVATIONS[name]
    raise ValueError(
        f"{where}.mlp is an Mlp with {name}; only GELU (exact or tanh) and QuickGELU are supported"
    )


def _classes() -> dict[str, Any]:
    """timm's model classes that convert, by role (None where this timm has no such class)."""
    models = getattr(sys.modules.get("timm"), "models", None)
    return {
        "vit": getattr(getattr(models, "vision_transformer", None), "VisionTransformer", None),
        "distilled": getattr(getattr(models, "deit", None), "VisionTransformerDistilled", None),
        "eva": getattr(getattr(models, "eva", None), "Eva", None),
        "relpos": getattr(
            getattr(models, "vision_transformer_relpos", None), "VisionTransformerRelPos", None
        ),
        "beit": getattr(getattr(models, "beit", None), "Beit", None),
        "naflex": getattr(getattr(models, "naflexvit", None), "NaFlexVit", None),
    }


def _linear_bias(layer: nn.Module | None) -> bool:
    return layer is not None and layer.bias is not None


def _attention(attn: nn.Module, where: str, C: int, prefix: int) -> dict[str, Any]:
    """The ``Attention`` options of a timm Attention, EvaAttention or AttentionRope; ValueError
    where it is something else."""
    if _name(attn) not in ("Attention", "EvaAttention", "AttentionRope", "RelPosAttention"):
        raise ValueError(
            f"{where}.attn is a {_name(attn)}; only timm's Attention, EvaAttention, AttentionRope and "
            "RelPosAttention are supported"
        )
    if getattr(attn, "gate", None) is not None:
        raise ValueError(f"{where}.attn is gated; not supported")
    H = attn.num_heads
    head_dim = C // H
    fused = getattr(attn, "qkv", None) is not None
    width = attn.qkv.out_features if fused else attn.q_proj.out_features * 3
    kv_heads = getattr(attn, "num_kv_heads", H)  # grouped-query attention where fewer (separate projections)
    if width != 3 * C or C % H or abs(attn.scale - head_dim**-0.5) > 1e-12 * head_dim**-0.5:
        raise ValueError(
            f"{where}.attn has an attention width or scale other than C and 1/sqrt(C/H); not supported"
        )
    if fused:
        q_bias = _linear_bias(attn.qkv) or getattr(attn, "q_bias", None) is not None
        k_bias = _linear_bias(attn.qkv)
    else:
        q_bias, k_bias = _linear_bias(attn.q_proj), _linear_bias(attn.k_proj)
        if q_bias != _linear_bias(attn.v_proj):
            raise ValueError(f"{where}.attn has a bias on q or v only; not supported")
    if getattr(attn, "num_prefix_tokens", prefix) != prefix:
        raise ValueError(
            f"{where}.attn leaves {attn.num_prefix_tokens} tokens unturned by RoPE, the model has "
            f"{prefix} prefix tokens; not supported"
        )
    norms = {
        _norm(getattr(attn, n, None) or nn.Identity(), f"{where}.attn.{n}")
        for n in ("q_norm", "k_norm", "norm")
    }
    return dict(
        qkv_fused=fused,
        qkv_bias=q_bias,
        k_bias=k_bias or not q_bias,
        qk_norm=not isinstance(getattr(attn, "q_norm", None) or nn.Identity(), nn.Identity),
        attn_norm=not isinstance(getattr(attn, "norm", None) or nn.Identity(), nn.Identity),
        proj_bias=_linear_bias(attn.proj),
        heads=H,
        rotate_half=bool(getattr(attn, "rotate_half", False)),
        kv_heads=None if kv_heads == H else kv_heads,
        norms=norms,
    )


def _mlp(mlp: nn.Module, where: str) -> dict[str, Any]:
    """The MLP options of a timm Mlp, SwiGLU or GluMlp (gate first); ValueError otherwise."""
    kind = {"Mlp": "mlp", "SwiGLU": "swiglu", "GluMlp": "glu"}.get(_name(mlp))
    if kind is None:
        raise ValueError(
            f"{where}.mlp is {_name(mlp)}; only an Mlp (two linear layers around an activation), "
            "SwiGLU and GluMlp are supported"
        )
    layers = [mlp.fc1_g, mlp.fc1_x, mlp.fc2] if kind == "swiglu" else [mlp.fc1, mlp.fc2]
    if not all(isinstance(layer, nn.Linear) for layer in layers):
        raise ValueError(f"{where}.mlp has convolutions for its linear layers; not supported")
    if len({layer.bias is not None for layer in layers}) > 1:
        raise ValueError(f"{where}.mlp has biases on some of its linear layers only; not supported")
    if kind == "mlp":
        act, hidden = _activation(mlp.act, where), mlp.fc1.out_features
    else:
        if _name(mlp.act) != "SiLU" or getattr(mlp, "gate_last", False):
            raise ValueError(
                f"{where}.mlp is a {_name(mlp)} with {_name(mlp.act)}"
                f"{' and the gate last' if getattr(mlp, 'gate_last', False) else ''}; only SiLU with the "
                "gate first is supported"
            )
        act, hidden = "gelu", mlp.fc2.in_features
    norm = _norm(getattr(mlp, "norm", None) or nn.Identity(), f"{where}.mlp.norm")
    return dict(
        mlp=kind,
        act=act,
        hidden=hidden,
        mlp_norm=norm is not None,
        mlp_bias=layers[0].bias is not None,
        norms={norm},
    )


def _block(block: nn.Module, where: str, C: int, prefix: int) -> dict[str, Any]:
    """Everything a pre-norm block of timm's ViT or EVA sets, for the comparison of all blocks."""
    post_norm = _name(block) in ("ResPostBlock", "EvaBlockPostNorm", "ResPostRelPosBlock")
    if _name(block) not in ("Block", "EvaBlock", "RelPosBlock") and not post_norm:
        raise ValueError(
            f"{where} is a {_name(block)}; only timm's Block, EvaBlock and RelPosBlock and their post-norm "
            "forms (ResPostBlock, EvaBlockPostNorm, ResPostRelPosBlock) are supported (parallel blocks "
            "have no point between attention and MLP for GTP)"
        )
    if post_norm:  # no layer scale
        layer_scale = mlp_layer_scale = False
    elif not hasattr(block, "gamma_1"):  # ls1 / ls2 modules; EVA and BEiT: gamma_1 / gamma_2 parameters
        scales = {_name(block.ls1), _name(block.ls2)}
        if scales - {"Identity", "LayerScale"} or len(scales) != 1:
            raise ValueError(
                f"{where} has layer scale {sorted(scales)}; only both ls1 and ls2 or neither is supported"
            )
        layer_scale = scales == {"LayerScale"}
        mlp_layer_scale = True
    else:
        if block.gamma_1 is None and block.gamma_2 is not None:
            raise ValueError(f"{where} has layer scale on the MLP only; not supported")
        layer_scale, mlp_layer_scale = block.gamma_1 is not None, block.gamma_2 is not None
    attention, mlp = _attention(block.attn, where, C, prefix), _mlp(block.mlp, where)
    norms = (
        attention.pop("norms")
        | mlp.pop("norms")
        | {_norm(block.norm1, f"{where}.norm1"), _norm(block.norm2, f"{where}.norm2")}
    )
    return {
        **attention,
        **mlp,
        "layer_scale": layer_scale,
        "mlp_layer_scale": mlp_layer_scale or not layer_scale,
        "post_norm": post_norm,
        "norms": norms,
    }


def _attention_pool(pool: nn.Module, block: dict[str, Any], C: int) -> set[tuple[str, float] | None]:
    """Check that timm's attention pool is the backbone's ``AttentionPool`` with the blocks' heads,
    MLP and biases; its norms, for the comparison of all norms."""
    if (
        _name(pool) != "AttentionPoolLatent"
        or getattr(pool, "pos_embed", None) is not None
        or not isinstance(pool.q, nn.Linear)
        or pool.latent.shape[1] != 1
        or pool.proj.out_features != C
    ):
        raise ValueError(
            "the model's attention pool (attn_pool) has a position embedding, no query projection, "
            "several latents or another width; only one latent query over the tokens is supported"
        )
    mlp = getattr(pool, "mlp", None)
    if (
        mlp is None
        or _name(mlp) != "Mlp"
        or _activation(mlp.act, "attn_pool") != block["act"]
        or mlp.fc1.bias is None
        or int(C * (mlp.fc1.out_features / C)) != mlp.fc1.out_features
    ):
        raise ValueError(
            "the model's attention pool (attn_pool) has an MLP of another kind or activation than the "
            "blocks' plain MLP; not supported"
        )
    if _linear_bias(pool.q) != _linear_bias(pool.kv):
        raise ValueError("the model's attention pool (attn_pool) has a bias on q or kv only; not supported")
    if not isinstance(pool.q_norm, nn.Identity) or not isinstance(pool.k_norm, nn.Identity):
        raise ValueError("the model's attention pool (attn_pool) normalises q and k; not supported")
    norm = _norm(pool.norm, "attn_pool.norm")
    if norm is None:
        raise ValueError("the model's attention pool (attn_pool) has no norm before its MLP; not supported")
    return {norm}


def timm_config(model: nn.Module) -> ViTConfig:
    """The ``ViTConfig`` of a timm VisionTransformer, Eva, Beit, ... (the classes of
    ``_classes``), after checking that every part of it is one the backbone represents exactly;
    ValueError naming the first that is not."""
    classes = _classes()
    kind = next((k for k, cls in classes.items() if cls is not None and type(model) is cls), None)
    distilled, eva = kind == "distilled", kind in ("eva", "beit")  # Eva and Beit: their map pools every token
    if kind is None:
        if classes["vit"] is not None and isinstance(model, classes["vit"]):
            raise ValueError(f"the model is a subclass of VisionTransformer ({_name(model)}); not supported")
        raise ValueError(
            f"model is a {_name(model)}: from_timm takes an instance of timm's VisionTransformer, "
            "VisionTransformerDistilled, VisionTransformerRelPos, Eva, Beit or NaFlexVit"
        )
    if distilled and (getattr(model, "num_reg_tokens", 0) or model.global_pool != "token"):
        raise ValueError(
            "the model is distilled DeiT with register tokens or another pooling than its [CLS] and "
            "distillation tokens; not supported"
        )
    embedding = naflex_embedding(model) if kind == "naflex" else patch_embedding(model)
    embed_norm = embedding.pop("embed_norm")
    rope, bias = getattr(model, "rope", None), attention_bias_table(model)
    if not embedding["pos_embed"] and rope is None and bias is None:
        raise ValueError("the model has no learned, rotary or relative position embedding; not supported")
    pool = "map" if getattr(model, "attn_pool", None) is not None else model.global_pool
    if pool not in GLOBAL_POOLS:
        raise ValueError(
            f"the model pools with global_pool={pool!r}; only 'token', 'avg' and 'map' are supported"
        )
    if not isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity):
        raise ValueError(
            "the model has a norm both before and after pooling (norm and fc_norm); not supported"
        )

    C, prefix = model.embed_dim, model.num_prefix_tokens
    blocks = [_block(block, f"blocks.{l}", C, prefix) for l, block in enumerate(model.blocks)]
    kv = [b.pop("kv_heads") or b["heads"] for b in blocks]  # k / v heads may differ per block (Sapiens2)
    norm_pre = getattr(model, "norm_pre", None) or nn.Identity()
    norms = set().union(*(b.pop("norms") for b in blocks)) | {
        embed_norm,
        _norm(norm_pre, "norm_pre"),
        _norm(model.norm, "norm"),
        _norm(model.fc_norm, "fc_norm"),
    }
    norms.discard(None)
    if len({kind for kind, _ in norms}) > 1:
        raise ValueError(
            f"the model mixes kinds of norm ({', '.join(sorted({kind for kind, _ in norms}))}); not supported"
        )
    if len(norms) > 1 or any(b != blocks[0] for b in blocks):
        raise ValueError(
            "the model's blocks differ from each other (norm eps, heads, MLP, layer scale, biases or "
            "norms); not supported"
        )
    block = blocks[0]
    mlp_ratio = block["hidden"] / C
    if int(C * mlp_ratio) != block["hidden"]:
        raise ValueError(
            f"the MLP width {block['hidden']} is not int(C * mlp_ratio) for any float mlp_ratio; not "
            "supported"
        )
    head = model.head
    heads_out = [head, *([model.head_dist] if distilled else [])]
    if not all(isinstance(h, (nn.Linear, nn.Identity)) for h in heads_out):
        raise ValueError(f"the model's head is a {_name(head)}; only a Linear (or none) is supported")
    if pool == "map":
        norms |= _attention_pool(model.attn_pool, block, C)
    if rope is not None and (C // block["heads"]) % 2:
        raise ValueError(
            f"the model has rotary embeddings on heads of odd width {C // block['heads']}; not supported"
        )
    kind, eps = norms.pop() if norms else ("layernorm", LN_EPS)  # the one kind and eps of every norm
    embedding.pop("grid")
    final = (
        "none"
        if isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)
        else "fc_norm"
        if isinstance(model.norm, nn.Identity)
        else "norm"
    )
    return ViTConfig.of(
        name=_name(model),
        **embedding,
        embed_dim=C,
        depth=len(blocks),
        num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        global_pool=pool,
        pool_prefix=(eva and pool == "map")
        or bool(getattr(model, "pool_include_prefix", False)),  # Eva's map: all
        pool_heads=model.attn_pool.num_heads if pool == "map" else None,
        pool_qkv_bias=_linear_bias(model.attn_pool.kv) if pool == "map" else None,
        pool_mlp_ratio=model.attn_pool.mlp.fc1.out_features / C if pool == "map" else None,
        dist_token=distilled,
        attn_bias=bias is not None,
        rope=None if rope is None else "half" if block["rotate_half"] else "interleaved",
        rope_mixed=bool(getattr(model, "rope_mixed", False) or getattr(model, "rope_is_mixed", False)),
        num_heads=block["heads"],
        qkv_bias=block["qkv_bias"],
        qkv_fused=block["qkv_fused"],
        k_bias=block["k_bias"],
        qk_norm=block["qk_norm"],
        attn_norm=block["attn_norm"],
        proj_bias=block["proj_bias"],
        kv_heads=None if kv == [block["heads"]] * len(kv) else kv[0] if len(set(kv)) == 1 else tuple(kv),
        mlp_kind=block["mlp"],
        mlp_ratio=mlp_ratio,
        act=block["act"],
        mlp_norm=block["mlp_norm"],
        mlp_bias=block["mlp_bias"],
        norm_kind=kind,
        norm_eps=eps,
        pre_norm=not isinstance(norm_pre, nn.Identity),
        final_norm=final,
        embed_norm=embed_norm is not None,
        post_norm=block["post_norm"],
        init_values=1.0 if block["layer_scale"] else None,
        mlp_layer_scale=block["mlp_layer_scale"],
    )


def rope_table(model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The timm model's RoPE table for the grid, as its forward computes it in eval mode:
    [L, H, n, 2 d] (L = H = 1 unless the table differs per block and head)."""
    rope = copy.deepcopy(model.rope).eval()
    table = (
        rope.get_embed()
        if getattr(rope, "feat_shape", None) is not None and not getattr(model, "dynamic_img_size", True)
        else rope.get_embed(shape=grid)
    )
    return table if table.ndim == 4 else table[None, None]


def attention_bias_table(model: nn.Module) -> torch.Tensor | None:
    """The relative-position bias each block of a timm VisionTransformerRelPos or Beit adds to its
    logits, for the model's own grid: [L, H, N, N] (N with the prefix tokens); None for other models."""
    shared = getattr(model, "shared_rel_pos", None) or getattr(model, "rel_pos_bias", None)
    shared = None if shared is None else shared.get_bias() if hasattr(shared, "get_bias") else shared()
    # BEiT's shared bias: [H, N, N]
    shared = None if shared is None else shared.reshape(1, *shared.shape[-3:])
    tables = []
    for block in model.blocks:
        attn = getattr(block, "attn", None)  # (a block without one is refused by name later)
        own = (
            attn.rel_pos.get_bias()
            if getattr(attn, "rel_pos", None) is not None
            else attn._get_rel_pos_bias()
            if getattr(attn, "relative_position_bias_table", None) is not None
            else None
        )
        if own is not None and shared is not None and hasattr(attn, "relative_position_bias_table"):
            own = own + shared  # BEiT adds both; RelPos takes its own where it has one
        tables.append(own if own is not None else shared)
    if all(t is None for t in tables):
        return None
    return torch.cat(tables)  # (L, H, N, N)


# the timm keys of relative-position modules, whose bias the converted model keeps as one table
REL_POS_KEYS = (
    "rel_pos",
    "shared_rel_pos",
    "rel_pos_bias",
    "relative_position_bias_table",
    "relative_position_index",
)


def _state_dict(model: nn.Module, net: nn.Module) -> dict[str, torch.Tensor]:
    """The timm model's state_dict with this backbone's names: EVA's and BEiT's layer scales
    ``gamma_1`` / ``gamma_2`` as ``ls1.gamma`` / ``ls2.gamma``; a RoPE module's parameters
    replaced by the table they give (``rope_table``), and relative-position modules by the bias
    they give (``attn_bias_table``), for the grid of ``net``, the model converted to."""
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("rope.") or any(part in REL_POS_KEYS for part in key.split(".")):
            continue
        parts = key.split(".")
        if parts[-1] in ("gamma_1", "gamma_2"):
            parts[-1:] = [f"ls{parts[-1][-1]}", "gamma"]
        renamed[".".join(parts)] = value
    if _name(model) == "NaFlexVit":
        renamed = naflex_state_dict(model, renamed)
    if net.config.positions.rope is not None:
        renamed["rope_table"] = rope_table(model, net.grid)
    if net.config.positions.attn_bias:
        renamed["attn_bias_table"] = attention_bias_table(model)
    return renamed


def timm_backbone(model: nn.Module) -> Backbone:
    """A timm model as the backbone's config and weights (the state_dict's tensors are the timm
    model's own, but for the RoPE and bias tables made for its grid and a hybrid's stem, copied):
    what ``from_timm`` builds its model from, and what callers that build several models on one
    set of weights share.  ValueError, as ``timm_config``, for what the backbone cannot represent."""
    config, stem = timm_config(model), stem_of(model)
    with torch.device("meta"):
        net = ViT(config, stem=None if stem is None else copy.deepcopy(stem).to("meta"))  # its tables' grid
    # (the stem's weights: timm's patch_embed.backbone.*)
    return Backbone(config, _state_dict(model, net), stem)


def _convert(model: nn.Module, cls: type, **settings: Any) -> Any:
    return build(
        model,
        timm_backbone(model),
        cls,
        stochastic_modules(model),
        "build it with drop_rate=0, attn_drop_rate=0, proj_drop_rate=0, drop_path_rate=0",
        **settings,
    )


def from_timm(model: nn.Module, **gtp_settings: Any) -> GTPViT:
    """A ``GTPViT`` with the geometry and weights of the timm VisionTransformer ``model``, on its
    device and in its dtype, with GTP's settings (``num_prop``, ``graph``, ``num_neighbours``,
    ``selection``, ``propagation``, ``sparsity``, ``alpha``, ``token_scale``, ``backend``).
    With ``num_prop=0, sparsity=1`` its logits are the timm model's."""
    return _convert(model, GTPViT, **gtp_settings)


def tome_from_timm(model: nn.Module, r: int | list[int] = 0, fused_attn: bool = True) -> ToMeViT:
    """A ``ToMeViT`` with the geometry and weights of the timm VisionTransformer ``model``, merging
    ``r`` tokens per block (an int or one per block)."""
    return _convert(model, ToMeViT, r=r, fused_attn=fused_attn)
