"""GTP and ToMe on your own Hugging Face model: ``from_hf(model, **gtp_settings)`` and ``tome_from_hf``.

Both read the architecture and the weights of a ``transformers`` vision model *instance* -- ViT,
DeiT, BEiT, Data2Vec-Vision, DINOv2 (with registers), CLIP / Chinese-CLIP / MetaCLIP 2 vision,
SigLIP, ViT-MSN, I-JEPA, ViT-MAE, Idefics3 / SmolVLM vision, InternVL vision, as a base model, a
``*ForImageClassification`` or CLIP's ``*VisionModelWithProjection`` -- and return a ``GTPViT`` /
``ToMeViT`` with the same weights, device, dtype and mode.  The model is read module by module
(``hf_backbone``: HF model -> the backbone's ``ViTConfig`` and state_dict), and anything the
backbone cannot represent -- windowed or pooled attention (Swin, Hiera, SAM, ViTDet), video
tubelets, variable-resolution packing, parallel blocks, a norm over all heads' q and k -- is
refused with a ValueError naming the module and why.

What the converted model returns is what the HF model gives as its result (docs/hf.md has the
table): the logits of a ``*ForImageClassification`` (DeiT with teacher: the mean of its two
heads, as HF's); the ``pooler_output`` of a base or vision model (ViT's tanh pooler, DINOv2's
normed [CLS], CLIP's post-layernorm [CLS], SigLIP's attention pool, BEiT's mean pooling); CLIP's
``image_embeds`` with projection; and, for a model without a pooled output (ViT-MAE, I-JEPA,
Idefics3, ...), the mean of its final image tokens.

transformers itself is not imported here: the model passed in is the user's.
"""

from typing import Any

import torch
from torch import nn

from gtp_ref.config import ViTConfig
from gtp_ref.model import GTPViT
from gtp_ref.timm_models import Backbone
from gtp_ref.tome import ToMeViT

# HF's activation names (config.hidden_act) that the backbone has
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}
# The towers from_hf reads, each tested against the HF model (tests/backbone/test_hf.py): a tower of
# another class is refused by name even where its modules look alike (ViLT's image tokens attend
# with text tokens; DPT reads the blocks' outputs), so that no untested model converts silently.
TOWERS_READ = (
    "ViTModel",
    "DeiTModel",
    "BeitModel",
    "Data2VecVisionModel",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
    "DINOv3ViTModel",
    "CLIPVisionModel",
    "ChineseCLIPVisionModel",
    "MetaClip2VisionModel",
    "SiglipVisionModel",
    "ViTMSNModel",
    "IJepaModel",
    "ViTMAEModel",
    "Idefics3VisionTransformer",
    "SmolVLMVisionTransformer",
    "InternVLVisionModel",
)
# the attribute that holds the vision tower in HF's heads and wrappers, in the order tried
TOWERS = ("vision_model", "vit", "deit", "beit", "data2vec_vision", "dinov2", "ijepa", "vit_msn")
# architectures the backbone cannot represent, by a word of their class name, and why
REFUSED = {
    "Swin": "windowed attention",
    "Hiera": "pooled, windowed attention",
    "Sam": "windowed attention",
    "VitDet": "windowed attention",
    "Video": "video tubelets",
    "Vivit": "video tubelets",
    "Pixtral": "variable-resolution packing",
    "Qwen": "variable-resolution packing",
    "Levit": "a convolutional stage between blocks",
    "Mobile": "convolutional stages",
}


def _name(obj: Any) -> str:
    return type(obj).__name__


def _get(obj: Any, *paths: str) -> Any:
    """The first of the dotted attribute paths that exists on obj and is not None; None if none does."""
    for path in paths:
        value = obj
        for part in path.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


def _weight(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _norm(module: nn.Module | None, where: str) -> tuple[str, float] | None:
    """(kind, eps) of a LayerNorm with weight and bias or an RMSNorm with a weight; None for none."""
    if module is None or isinstance(module, nn.Identity):
        return None
    if "RMSNorm" in _name(module) or "RmsNorm" in _name(module):
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if eps is None or getattr(module, "weight", None) is None:
            raise ValueError(f"{where} is an {_name(module)} without a weight or eps; not supported")
        return "rmsnorm", float(eps)
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise ValueError(
            f"{where} is a {_name(module)}; only LayerNorm (with weight and bias) and RMSNorm are supported"
        )
    return "layernorm", float(module.eps)


def _tower(model: nn.Module) -> tuple[nn.Module, str]:
    """The vision tower of an HF model and the role of the model around it: "base" (the tower
    itself), "classification" or "projection"."""
    for word, why in REFUSED.items():
        if word.lower() in _name(model).lower():
            raise ValueError(
                f"model is a {_name(model)}: {why}, which this project's backbone cannot represent"
            )
    name = _name(model)
    role = (
        "classification"
        if "ForImageClassification" in name
        else "projection"
        if name.endswith("WithProjection")
        else "base"
    )
    if role == "base" and getattr(model, "embeddings", None) is None:
        tower = _get(model, "vision_model", "vision_tower")
        if tower is None:
            raise ValueError(
                f"model is a {name}: no vision tower found (an HF vision model, "
                "*ForImageClassification or *VisionModelWithProjection is expected)"
            )
        return _tower(tower)[0], "base"
    if role != "base":
        tower = _get(model, *TOWERS)
        if tower is None:
            raise ValueError(f"model is a {name}: no vision tower found among {', '.join(TOWERS)}")
        return tower, role
    return model, role


def _blocks(tower: nn.Module) -> list[nn.Module]:
    blocks = _get(tower, "layers", "encoder.layer", "encoder.layers", "model.layer")
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(
            f"the model's tower {_name(tower)} has no list of blocks (layers / encoder.layer(s))"
        )
    return list(blocks)


def _attention(block: nn.Module, where: str, C: int) -> dict[str, Any]:
    """q, k, v, o Linear layers of a block's attention; ValueError for other attentions."""
    attn = _get(block, "attention", "self_attn")
    q, k, v = (
        _get(attn, f"{r}_proj", f"attention.{n}", n)
        for r, n in (("q", "query"), ("k", "key"), ("v", "value"))
    )
    o = _get(attn, "o_proj", "out_proj", "output.dense", "projection_layer")
    if not all(isinstance(t, nn.Linear) for t in (q, k, v, o)):
        raise ValueError(
            f"{where}.attention is a {_name(attn)} without q / k / v / output Linear layers; not supported"
        )
    if any(t.weight.shape != (C, C) for t in (q, k, v, o)):
        raise ValueError(
            f"{where}.attention has projections of another width than the model's ({C}); not supported"
        )
    for norm in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, norm, None) or nn.Identity(), nn.Identity):
            raise ValueError(f"{where}.attention normalises q and k over all heads together; not supported")
    if (q.bias is None) != (v.bias is None):
        raise ValueError(f"{where}.attention has a bias on q or v only; not supported")
    return dict(q=q, k=k, v=v, o=o)


def _mlp(block: nn.Module, where: str, act: str) -> dict[str, Any]:
    """The MLP's Linear layers by the backbone's names and its kind: a plain MLP (fc1, fc2), DINOv2's
    SwiGLU (one fc1 of both halves: glu) or a gated MLP with SiLU (gate, up, down: swiglu)."""
    mlp = getattr(block, "mlp", None)
    if mlp is None:  # the older layout: intermediate.dense, output.dense
        fc1, fc2 = _get(block, "intermediate.dense"), _get(block, "output.dense")
        layers = {"fc1": fc1, "fc2": fc2}
    elif hasattr(mlp, "gate_proj"):
        fn = _name(getattr(mlp, "act_fn", None))
        if fn not in ("SiLU", "SiLUActivation"):
            raise ValueError(f"{where}.mlp is gated with {fn}; only SiLU (SwiGLU) is supported")
        layers = {"fc1_g": mlp.gate_proj, "fc1_x": mlp.up_proj, "fc2": mlp.down_proj}
    else:
        layers = {
            "fc1": _get(mlp, "fc1", "weights_in", "up_proj"),
            "fc2": _get(mlp, "fc2", "weights_out", "down_proj"),
        }
    if not all(isinstance(layer, nn.Linear) for layer in layers.values()):
        raise ValueError(f"{where}.mlp is a {_name(mlp)} without Linear layers (fc1 / fc2); not supported")
    kind = "swiglu" if "fc1_g" in layers else "glu" if hasattr(mlp, "weights_in") else "mlp"
    return dict(
        layers=layers, kind=kind, hidden=layers["fc2"].in_features, bias=layers["fc2"].bias is not None
    )


def _layer_scales(block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (_get(block, "layer_scale1.lambda1", "lambda_1"), _get(block, "layer_scale2.lambda1", "lambda_2"))


def _read(model: nn.Module) -> dict[str, Any]:
    """Everything of an HF vision model the backbone needs, checked: a dict of the config's fields
    (``fields``), the weights by the backbone's names (``state``) and what produces them."""
    tower, role = _tower(model)
    if _name(tower) not in TOWERS_READ:
        raise ValueError(
            f"the model's vision tower is not one from_hf reads and tests; it is a {_name(tower)} "
            f"(those it reads: {', '.join(TOWERS_READ)})"
        )
    config = getattr(tower, "config", None)
    emb = getattr(tower, "embeddings", None)
    if emb is None or config is None:
        raise ValueError(f"the model's tower {_name(tower)} has no patch embedding (not a vision model?)")
    conv = _get(emb, "patch_embeddings.projection", "patch_embedding", "patch_embeddings")
    if conv is None:
        raise ValueError(f"the model's tower {_name(tower)} has no patch embedding (not a vision model?)")
    if (
        not isinstance(conv, nn.Conv2d)
        or conv.kernel_size != conv.stride
        or conv.kernel_size[0] != conv.kernel_size[1]
        or conv.padding not in ("valid", (0, 0))
        or conv.groups != 1
    ):
        raise ValueError(
            f"the model's patch embedding is a {_name(conv)}, not one square convolution with kernel = "
            "stride = patch; not supported"
        )
    C, patch = conv.out_channels, conv.kernel_size[0]
    size = config.image_size
    img_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    grid = (img_size[0] // patch, img_size[1] // patch)
    n = grid[0] * grid[1]

    cls = _get(emb, "cls_token", "class_embedding")
    dist = getattr(emb, "distillation_token", None)
    registers = getattr(emb, "register_tokens", None)
    if dist is not None and not hasattr(model, "distillation_classifier"):
        registers, dist = (
            dist,
            None,
        )  # a distillation token nothing reads is a register token: the second prefix token
    R = 0 if registers is None else registers.shape[1]
    state: dict[str, torch.Tensor] = {"patch_embed.proj.weight": _weight(conv.weight)}
    if conv.bias is not None:
        state["patch_embed.proj.bias"] = _weight(conv.bias)
    if cls is not None:
        state["cls_token"] = _weight(cls).reshape(1, 1, C)
    if dist is not None:
        state["dist_token"] = _weight(dist).reshape(1, 1, C)
    if R:
        state["reg_token"] = _weight(registers)
    c = int(cls is not None) + int(dist is not None) + R
    pos = _positions(emb, conv, n, c, R, C)
    if pos is not None:
        state["pos_embed"] = pos

    pre = _get(tower, "pre_layrnorm")
    if pre is not None:
        state.update({f"norm_pre.{k}": _weight(v) for k, v in pre.state_dict().items()})
    blocks, norms = _blocks(tower), {_norm(pre, "pre_layrnorm")}
    hidden_act = getattr(config, "hidden_act", "")
    act = HF_ACTIVATIONS.get(
        hidden_act, "silu" if hidden_act == "silu" else None
    )  # silu: the gated MLPs' only
    H = config.num_attention_heads
    first = None
    for l, block in enumerate(blocks):
        where = f"blocks.{l}"
        a, m = _attention(block, where, C), _mlp(block, where, act)
        n1 = _get(block, "layernorm_before", "norm1", "layer_norm1", "rms_norm1")
        n2 = _get(block, "layernorm_after", "norm2", "layer_norm2", "rms_norm2")
        norms |= {_norm(n1, f"{where}.norm1"), _norm(n2, f"{where}.norm2")}
        ls1, ls2 = _layer_scales(block)
        shape = dict(
            qkv_bias=a["q"].bias is not None,
            k_bias=a["k"].bias is not None,
            proj_bias=a["o"].bias is not None,
            mlp=m["kind"],
            hidden=m["hidden"],
            mlp_bias=m["bias"],
            layer_scale=ls1 is not None,
            ls2=ls2 is not None,
        )
        if m["kind"] == "mlp" and act not in HF_ACTIVATIONS.values():
            raise ValueError(
                f"the model's MLP activation {hidden_act!r} is not one of {', '.join(HF_ACTIVATIONS)}; "
                "not supported"
            )
        if first is not None and shape != first:
            raise ValueError(f"{where} differs from blocks.0 ({shape} vs {first}); not supported")
        first = shape
        qkv = [a[r].weight for r in ("q", "k", "v")]
        state[f"{where}.attn.qkv.weight"] = _weight(torch.cat(qkv))
        if shape["qkv_bias"] and shape["k_bias"]:
            state[f"{where}.attn.qkv.bias"] = _weight(torch.cat([a[r].bias for r in ("q", "k", "v")]))
        elif shape["qkv_bias"]:  # BEiT: q and v biases beside a bias-free qkv
            state[f"{where}.attn.q_bias"], state[f"{where}.attn.v_bias"] = (
                _weight(a["q"].bias),
                _weight(a["v"].bias),
            )
        state.update({f"{where}.attn.proj.{k}": _weight(v) for k, v in a["o"].state_dict().items()})
        state.update({f"{where}.norm1.{k}": _weight(v) for k, v in n1.state_dict().items()})
        state.update({f"{where}.norm2.{k}": _weight(v) for k, v in n2.state_dict().items()})
        for part, layer in m["layers"].items():
            state.update({f"{where}.mlp.{part}.{k}": _weight(v) for k, v in layer.state_dict().items()})
        if ls1 is not None:
            state[f"{where}.ls1.gamma"] = _weight(ls1)
        if ls2 is not None:
            state[f"{where}.ls2.gamma"] = _weight(ls2)
    if first["layer_scale"] and not first["ls2"]:
        raise ValueError("the model has layer scale on the attention only; not supported")
    bias = _attention_bias(tower, blocks, grid, c, H)
    if bias is not None:
        state["attn_bias_table"] = bias
    rope = _rope_table(tower, conv, img_size)
    if rope is not None:
        state["rope_table"] = rope
    head = _head(model, tower, role, C, c, state, norms)
    norms.discard(None)
    if len(norms) > 1:
        raise ValueError(f"the model mixes kinds or eps of norm ({sorted(norms)}); not supported")
    kind, eps = norms.pop() if norms else ("layernorm", 1e-6)
    fields = dict(
        name=_name(model),
        img_size=img_size,
        patch_size=patch,
        in_chans=conv.in_channels,
        embed_dim=C,
        depth=len(blocks),
        patch_bias=conv.bias is not None,
        class_token=cls is not None,
        dist_token=dist is not None,
        reg_tokens=R,
        pos_embed=pos is not None,
        attn_bias=bias is not None,
        rope=None if rope is None else "half",
        num_heads=H,
        qkv_bias=first["qkv_bias"],
        k_bias=first["k_bias"] or not first["qkv_bias"],
        proj_bias=first["proj_bias"],
        mlp_kind=first["mlp"],
        mlp_ratio=first["hidden"] / C,
        act=act if first["mlp"] == "mlp" else "gelu",  # (the gated MLPs' SiLU is their own)
        mlp_bias=first["mlp_bias"],
        norm_kind=kind,
        norm_eps=eps,
        pre_norm=pre is not None,
        init_values=1.0 if first["layer_scale"] else None,
        **head,
    )
    return dict(fields=fields, state=state)


def _positions(emb: nn.Module, conv: nn.Conv2d, n: int, c: int, R: int, C: int) -> torch.Tensor | None:
    """The position embedding each token receives, [1, c + n, C] (prefix rows first; a register's
    row 0 where the model adds none to it, as DINOv2's), or None without one."""
    pos = _get(emb, "position_embeddings", "position_embedding.weight")
    if pos is None:
        return None
    pos = _weight(pos).reshape(1, -1, C)
    if _name(emb).startswith(
        ("Idefics3", "SmolVLM")
    ):  # bucketed positions: the full grid's, read from the module
        pixels = torch.zeros(
            1,
            conv.in_channels,
            *(s * conv.kernel_size[0] for s in _grid_of(emb, n)),
            dtype=conv.weight.dtype,
            device=conv.weight.device,
        )
        mask = torch.ones(1, *_grid_of(emb, n), dtype=torch.bool, device=pixels.device)
        with torch.no_grad():
            out = emb(pixels, mask)
        return (out - (0 if conv.bias is None else conv.bias)).detach()
    if pos.shape[1] == n + c:
        return pos
    if pos.shape[1] == n + c - R and R and c - R == 1:  # DINOv2 with registers: [CLS] and patches only
        return torch.cat([pos[:, :1], pos.new_zeros(1, R, C), pos[:, 1:]], dim=1)
    if pos.shape[1] == n:  # no prefix token
        return pos
    raise ValueError(
        f"the model's position embedding has {pos.shape[1]} rows for {c} prefix and {n} image tokens "
        "(another image size than the model's config?); not supported"
    )


def _rope_table(tower: nn.Module, conv: nn.Conv2d, img_size: tuple[int, int]) -> torch.Tensor | None:
    """DINOv3's RoPE table for the model's grid, [1, 1, n, 2 d] (the sines, then the cosines, in the
    half layout, as HF's rotate_half turns q and k), from its own module in eval mode; None without."""
    rope = getattr(tower, "rope_embeddings", None)
    if rope is None:
        return None
    pixels = torch.zeros(1, conv.in_channels, *img_size, dtype=conv.weight.dtype, device=conv.weight.device)
    was = rope.training
    with torch.no_grad():
        cos, sin = rope.eval()(pixels)
    rope.train(was)
    return torch.cat([sin, cos], dim=-1)[None, None].detach()


def _grid_of(emb: nn.Module, n: int) -> tuple[int, int]:
    side = getattr(emb, "num_patches_per_side", None) or int(round(n**0.5))
    return side, side


def _attention_bias(
    tower: nn.Module, blocks: list[nn.Module], grid: tuple[int, int], c: int, H: int
) -> torch.Tensor | None:
    """BEiT's relative-position biases for the grid, [L, H, N, N], or None: each block's own plus
    the shared one, as HF's forward adds them."""
    shared = _get(tower, "shared_position_bias", "encoder.relative_position_bias")
    tables = []
    for block in blocks:
        own = _get(block, "relative_position_bias", "attention.attention.relative_position_bias")
        total = None
        for module in (own, shared):
            if module is not None:
                with torch.no_grad():
                    b = module(grid, interpolate_pos_encoding=False, dim_size=None)
                total = b if total is None else total + b
        tables.append(total)
    if all(t is None for t in tables):
        return None
    if c != 1:
        raise ValueError(
            "the model has a relative-position bias and prefix tokens beyond [CLS]; not supported"
        )
    return torch.stack([t.reshape(H, *t.shape[-2:]) for t in tables]).detach()  # (L, H, N, N)


def _head(
    model: nn.Module, tower: nn.Module, role: str, C: int, c: int, state: dict[str, torch.Tensor], norms: set
) -> dict[str, Any]:
    """The head's fields of the config (pooling, final norm, pooler, classes), its weights into state."""
    final = _get(tower, "layernorm", "post_layernorm", "rms_norm", "norm")
    final = None if isinstance(final, nn.Identity) else final
    name = _name(tower)
    clip_like = hasattr(tower, "pre_layrnorm")  # CLIP's post_layernorm: on the pooled [CLS] only
    fields: dict[str, Any] = dict(num_classes=0, final_norm="norm" if final is not None else "none")
    if final is not None:
        state.update({f"norm.{k}": _weight(v) for k, v in final.state_dict().items()})
        norms.add(_norm(final, "the final norm"))
    pooler = getattr(tower, "pooler", None)
    attn_head = getattr(tower, "head", None) if name.startswith("Siglip") else None
    if role == "classification":
        classifier = _get(model, "classifier", "cls_classifier")
        heads = [classifier] + (
            [model.distillation_classifier] if hasattr(model, "distillation_classifier") else []
        )
        if not all(isinstance(h, (nn.Linear, nn.Identity)) for h in heads):
            raise ValueError(f"the model's classifier is a {_name(classifier)}; only a Linear is supported")
        mname = _name(model)
        if mname.startswith("Dinov2"):
            raise ValueError(
                f"model is a {mname}: its classifier reads [CLS] and the mean of the patch tokens "
                "side by side; not supported (convert its Dinov2Model)"
            )
        if mname.startswith(("Beit", "Data2VecVision")):
            fields.update(
                _mean_pool(
                    model.beit.pooler if mname.startswith("Beit") else model.data2vec_vision.pooler,
                    state,
                    norms,
                    c,
                )
            )
        elif mname.startswith(("CLIP", "Siglip", "IJepa", "ChineseCLIP", "MetaClip")):
            fields.update(global_pool="avg")  # the mean of the (patch) tokens
            if clip_like:  # CLIP's classifier reads the tokens before post_layernorm
                fields.update(final_norm="none")
                for key in [k for k in state if k.startswith("norm.")]:
                    del state[key]
        else:
            fields.update(global_pool="token")
        if isinstance(classifier, nn.Linear):
            fields.update(num_classes=classifier.out_features)
            state.update({f"head.{k}": _weight(v) for k, v in classifier.state_dict().items()})
            if len(heads) > 1:
                state.update({f"head_dist.{k}": _weight(v) for k, v in heads[1].state_dict().items()})
        return fields
    if attn_head is not None:  # SigLIP's attention pooling: one probe, torch's MultiheadAttention, an MLP
        fields.update(
            global_pool="map",
            pool_prefix=c > 0,
            pool_heads=attn_head.attention.num_heads,
            pool_qkv_bias=attn_head.attention.in_proj_bias is not None,
            pool_mlp_ratio=attn_head.mlp.fc1.out_features / C,
        )
        w, b = attn_head.attention.in_proj_weight, attn_head.attention.in_proj_bias
        state.update(
            {
                "attn_pool.latent": _weight(attn_head.probe),
                "attn_pool.q.weight": _weight(w[:C]),
                "attn_pool.kv.weight": _weight(w[C:]),
                "attn_pool.q.bias": _weight(b[:C]),
                "attn_pool.kv.bias": _weight(b[C:]),
            }
        )
        state.update(
            {f"attn_pool.proj.{k}": _weight(v) for k, v in attn_head.attention.out_proj.state_dict().items()}
        )
        state.update({f"attn_pool.norm.{k}": _weight(v) for k, v in attn_head.layernorm.state_dict().items()})
        state.update({f"attn_pool.mlp.{k}": _weight(v) for k, v in attn_head.mlp.state_dict().items()})
        norms.add(_norm(attn_head.layernorm, "the attention pool's norm"))
        return fields
    if name.startswith(("Beit", "Data2VecVision")) and pooler is not None:
        fields.update(_mean_pool(pooler, state, norms, c))
    elif pooler is not None and hasattr(pooler, "dense"):  # ViT's: dense and tanh on the normed [CLS]
        if not c:
            raise ValueError(
                f"{name}.pooler reads the first token, and the model has no [CLS] token; not supported"
            )
        if _name(pooler.activation) != "Tanh":
            raise ValueError(
                f"{name}.pooler's activation is {_name(pooler.activation)}; only tanh is supported"
            )
        fields.update(global_pool="token", pooler="tanh")
        state.update({f"pooler.dense.{k}": _weight(v) for k, v in pooler.dense.state_dict().items()})
    elif clip_like or name.startswith(("Dinov2", "DINOv3")):
        fields.update(global_pool="token")
    else:  # no pooled output: the mean of the final image tokens
        fields.update(global_pool="avg")
    if role == "projection":
        projection = model.visual_projection
        fields.update(num_classes=projection.out_features, head_bias=projection.bias is not None)
        state.update({f"head.{k}": _weight(v) for k, v in projection.state_dict().items()})
    return fields


def _mean_pool(pooler: nn.Module, state: dict[str, torch.Tensor], norms: set, c: int) -> dict[str, Any]:
    """BEiT's pooler: the normed mean of the patch tokens (use_mean_pooling), or the [CLS] token."""
    norm = getattr(pooler, "layernorm", None)
    if norm is None:
        return dict(global_pool="token")
    state.update({f"fc_norm.{k}": _weight(v) for k, v in norm.state_dict().items()})
    norms.add(_norm(norm, "the pooler's norm"))
    return dict(global_pool="avg", final_norm="fc_norm")


def hf_backbone(model: nn.Module) -> Backbone:
    """An HF vision model as the backbone's config and weights (``gtp_ref.timm_models.Backbone``;
    the state_dict's tensors are the HF model's own, re-laid out where the backbone fuses them):
    what ``from_hf`` builds its model from.  ValueError for what the backbone cannot represent."""
    read = _read(model)
    return Backbone(ViTConfig.of(**read["fields"]), read["state"], None)


def _convert(model: nn.Module, cls: type, **settings: Any) -> Any:
    config, state, _ = hf_backbone(model)
    dtypes = sorted({str(t.dtype) for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()})
    if len(dtypes) > 1:
        raise ValueError(
            f"the model's parameters and buffers have several dtypes ({', '.join(dtypes)}); convert "
            "a model of one dtype (model.to(dtype)): the converted model has one"
        )
    param = next(model.parameters())
    with torch.device(param.device):
        net = cls(config, **settings)
    net.to(param.dtype).load_state_dict({k: v.to(param.dtype) for k, v in state.items()}, strict=True)
    return net.train(model.training)


def from_hf(model: nn.Module, **gtp_settings: Any) -> GTPViT:
    """A ``GTPViT`` with the architecture and weights of the Hugging Face vision model ``model``, on
    its device and in its dtype, with GTP's settings (``num_prop``, ``graph``, ...).  With
    ``num_prop=0, sparsity=1`` it returns what the HF model does (module docstring)."""
    return _convert(model, GTPViT, **gtp_settings)


def tome_from_hf(model: nn.Module, r: int | list[int] = 0, fused_attn: bool = True) -> ToMeViT:
    """A ``ToMeViT`` with the architecture and weights of the HF vision model ``model``, merging
    ``r`` tokens per block (where ToMe is defined: a [CLS] token at most, no relative bias)."""
    return _convert(model, ToMeViT, r=r, fused_attn=fused_attn)
