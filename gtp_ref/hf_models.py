"""GTP and ToMe on your own Hugging Face model: ``from_hf(model, **gtp_settings)`` and ``tome_from_hf``.

Both read the architecture and the weights of a ``transformers`` vision model *instance* -- ViT,
DeiT, BEiT, Data2Vec-Vision, DINOv2 (with registers), CLIP / Chinese-CLIP / MetaCLIP 2 vision,
SigLIP, ViT-MSN, I-JEPA, ViT-MAE, Idefics3 / SmolVLM vision, InternVL vision, as a base model, a
``*ForImageClassification`` or CLIP's ``*VisionModelWithProjection``; a timm model inside
transformers (``TimmWrapper*``) as ``from_timm`` reads it -- and return a ``GTPViT`` /
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
from gtp_ref.convert import Backbone, build, stochastic_modules
from gtp_ref.hf_parts import attention_bias as _attention_bias
from gtp_ref.hf_parts import first_attr as _get
from gtp_ref.hf_parts import name_of as _name
from gtp_ref.hf_parts import norm_of as _norm
from gtp_ref.hf_parts import positions as _positions
from gtp_ref.hf_parts import read_head as _head
from gtp_ref.hf_parts import rope_table as _rope_table
from gtp_ref.hf_parts import weight_of as _weight
from gtp_ref.model import GTPViT
from gtp_ref.timm_models import timm_backbone
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
# transformers' wrappers of a timm model (model.timm_model): read as from_timm reads it
TIMM_WRAPPERS = ("TimmWrapperModel", "TimmWrapperForImageClassification")
# the attribute that holds the vision tower in HF's heads and wrappers, in the order tried
TOWERS = ("vision_model", "vit", "deit", "beit", "data2vec_vision", "dinov2", "ijepa", "vit_msn")
# architectures the backbone cannot represent, by a word of their class name, and why
REFUSED = {
    "Swin": "windowed attention",
    "Hiera": "pooled, windowed attention",
    "Sam": "windowed attention",
    "VitDet": "windowed attention",
    "VideoMAE": "video tubelets",
    "Vivit": "video tubelets",
    "Pixtral": "variable-resolution packing",
    "Qwen": "variable-resolution packing",
    "Mobile": "convolutional stages",  # before Levit, a part of MobileViT's name
    "Levit": "a convolutional stage between blocks",
}


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
    if role == "base" and getattr(getattr(model, "config", None), "text_config", None) is not None:
        raise ValueError(
            f"model is a {name}, a model of images and text, whose result is not the vision model's: "
            "convert its vision model (model.vision_model), or the *VisionModelWithProjection for "
            "the image embedding"
        )
    if role == "base" and getattr(model, "embeddings", None) is None:
        tower = _get(model, "vision_model", "vision_tower")
        if tower is None:
            raise ValueError(
                f"model is a {name}: not a vision model from_hf reads and tests (no patch embeddings "
                "where a ViT has them, no vision tower); an HF ViT-family vision model, its "
                "*ForImageClassification or *VisionModelWithProjection is expected"
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


def hf_result(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the HF model gives as its result for images [B, C, H, W] -- what the converted model
    returns: its logits, its image embedding, its pooled output, or where it has none the mean of
    its final image tokens (ViT-MAE run without shuffling its tokens, Idefics3 / SmolVLM on the
    full grid)."""
    name, kwargs = _name(model), {}
    tower = None if name in TIMM_WRAPPERS else _tower(model)[0]
    if "MAE" in name:
        n = tower.embeddings.patch_embeddings.num_patches
        kwargs["noise"] = torch.arange(n, dtype=pixel_values.dtype, device=pixel_values.device).expand(
            len(pixel_values), n
        )
    if name.startswith(("Idefics3", "SmolVLM")):
        side = tower.embeddings.num_patches_per_side
        kwargs["patch_attention_mask"] = torch.ones(
            len(pixel_values), side, side, dtype=torch.bool, device=pixel_values.device
        )
    out = model(pixel_values=pixel_values, **kwargs)
    for attr in ("logits", "image_embeds", "pooler_output"):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr)
    prefix = _read_prefix(tower)
    return out.last_hidden_state[:, prefix:].mean(dim=1)


def _read_prefix(tower: nn.Module) -> int:
    emb = tower.embeddings
    registers = getattr(emb, "register_tokens", None)
    return (
        int(_get(emb, "cls_token", "class_embedding") is not None)
        + int(getattr(emb, "distillation_token", None) is not None)
        + (0 if registers is None else registers.shape[1])
    )


def hf_backbone(model: nn.Module) -> Backbone:
    """An HF vision model as the backbone's config and weights (``gtp_ref.timm_models.Backbone``;
    the state_dict's tensors are the HF model's own, re-laid out where the backbone fuses them):
    what ``from_hf`` builds its model from.  ValueError for what the backbone cannot represent.
    A timm model inside transformers (``TimmWrapperModel``, ``TimmWrapperForImageClassification``)
    is read as ``from_timm`` reads it."""
    if _name(model) in TIMM_WRAPPERS:
        return timm_backbone(model.timm_model)
    read = _read(model)
    return Backbone(ViTConfig.of(**read["fields"]), read["state"], None)


def hf_stochastic(model: nn.Module) -> list[str]:
    """'name (Kind p=...)' for what the HF model drops in training mode: its dropout and drop path
    modules, and the attention dropout its attention modules apply as a probability (HF's
    ``dropout_prob`` / ``dropout`` / ``attention_dropout`` attributes)."""
    found = stochastic_modules(model)
    for name, module in model.named_modules():
        for attr in ("dropout_prob", "dropout", "attention_dropout"):
            p = vars(module).get(attr)  # a plain attribute, not a submodule
            if isinstance(p, float) and p > 0:
                found.append(f"{name} (attention dropout p={p:g})")
    return found


def _convert(model: nn.Module, cls: type, **settings: Any) -> Any:
    return build(
        model,
        hf_backbone(model),
        cls,
        hf_stochastic(model),
        "build it with every dropout probability of its config 0 (hidden_dropout_prob, "
        "attention_probs_dropout_prob, attention_dropout, drop_path_rate, ...)",
        **settings,
    )


def from_hf(model: nn.Module, **gtp_settings: Any) -> GTPViT:
    """A ``GTPViT`` with the architecture and weights of the Hugging Face vision model ``model``, on
    its device and in its dtype, with GTP's settings (``num_prop``, ``graph``, ...).  With
    ``num_prop=0, sparsity=1`` it returns what the HF model does (module docstring)."""
    return _convert(model, GTPViT, **gtp_settings)


def tome_from_hf(model: nn.Module, r: int | list[int] = 0, fused_attn: bool = True) -> ToMeViT:
    """A ``ToMeViT`` with the architecture and weights of the HF vision model ``model``, merging
    ``r`` tokens per block (where ToMe is defined: a [CLS] token at most, no relative bias)."""
    return _convert(model, ToMeViT, r=r, fused_attn=fused_attn)
