"""GTP and ToMe on your own timm model: ``from_timm(model, **gtp_settings)`` and ``tome_from_timm``.

Both read the geometry and the weights of a timm ``VisionTransformer`` *instance* and return a
``GTPViT`` / ``ToMeViT`` with the same weights, on the same device and in the same dtype.  The
model is checked module by module -- not by its state_dict keys, which a different architecture
can share (a post-norm ViT has a pre-norm ViT's keys) -- and anything this project's backbone
cannot represent is refused with a ValueError naming it.

Supported (docs/timm.md has the matrix and the timm versions tested): plain ViT / DeiT of any
size, patch and image size (square or not); ``class_token=False`` with average pooling; a class
token with average pooling (prefix tokens left out of the mean); layer scale (DeiT-III);
register tokens (``reg_tokens``) and ``no_embed_class``; distilled DeiT (a distillation token,
two heads); ``fc_norm`` either way (the ``*_gap_*`` models) or no final norm; ``norm_pre``
(CLIP-style pre-norm) and a norm after the patch embedding; LayerNorm of any eps or RmsNorm;
exact or tanh GELU and QuickGELU; patch embeddings without bias; no head (``num_classes=0``, e.g.
MAE weights).  Refused: post-norm blocks, parallel or other block types, ``map`` / ``max`` / no
pooling, hybrid (convolutional) stems, q/k or attention / MLP norms, gated attention, MLPs of
another kind (SwiGLU, ...), a dynamic image size or padding, rotary or no position embeddings,
and every other model class (EVA, ...).  ToMe also refuses register and distillation tokens (the
official ToMe protects only the [CLS] token).  ``python -m gtp_ref.support`` counts what converts
among timm's registered models.

timm itself is not imported here: the model passed in is the user's, so timm is already loaded.
"""
import sys
from typing import Any

import torch
from torch import nn

from gtp_ref._checks import GLOBAL_POOLS
from gtp_ref.model import GTPViT
from gtp_ref.tome import ToMeViT
from gtp_ref.vit import LN_EPS


def _name(obj: Any) -> str:
    return type(obj).__name__


def _norm(module: nn.Module, where: str) -> tuple[str, float] | None:
    """(kind, eps) of a LayerNorm with weight and bias or of an RmsNorm with a weight (timm's or
    torch's), None for an identity; ValueError otherwise."""
    if isinstance(module, nn.Identity):
        return None
    if _name(module) in ("RmsNorm", "RMSNorm"):
        weight, shape = getattr(module, "weight", None), tuple(getattr(module, "normalized_shape", ()))
        if weight is None or len(shape) != 1 or getattr(module, "eps", None) is None:
            raise ValueError(f"{where} is an RmsNorm without a weight over the channels; not supported")
        return "rmsnorm", float(module.eps)
    if type(module) is not nn.LayerNorm and _name(module) != "LayerNorm":  # timm's LayerNorm subclasses nn's
        raise ValueError(f"{where} is a {_name(module)}; only LayerNorm and RmsNorm are supported")
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise ValueError(f"{where} is a LayerNorm without weight and bias; not supported")
    return "layernorm", module.eps


TIMM_ACTIVATIONS = {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}  # timm's activation modules


def _activation(act: nn.Module, where: str) -> str:
    """The backbone's name of an MLP activation: exact or tanh GELU, QuickGELU; ValueError otherwise."""
    name = _name(act)
    if name == "GELU":
        return "gelu" if getattr(act, "approximate", "none") == "none" else "gelu_tanh"
    if name in TIMM_ACTIVATIONS:
        return TIMM_ACTIVATIONS[name]
    raise ValueError(f"{where}.mlp is an Mlp with {name}; only GELU (exact or tanh) and QuickGELU are supported")


def _identity(module: nn.Module | None, what: str) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise ValueError(f"the model has {what} ({_name(module)}); not supported")


def timm_geometry(model: nn.Module) -> dict[str, Any]:
    """The ``gtp_ref.vit.ViT`` keyword arguments of a timm VisionTransformer, after checking that
    every part of it is one the backbone represents exactly; ValueError naming the first that is not."""
    timm = sys.modules.get("timm")
    vit_class = getattr(getattr(getattr(timm, "models", None), "vision_transformer", None), "VisionTransformer", None)
    distilled_class = getattr(getattr(getattr(timm, "models", None), "deit", None), "VisionTransformerDistilled", None)
    if vit_class is None or not isinstance(model, vit_class):
        raise ValueError(f"model is a {_name(model)}: from_timm takes a timm VisionTransformer "
                         "(timm.models.vision_transformer.VisionTransformer) instance")
    distilled = distilled_class is not None and type(model) is distilled_class
    if type(model) is not vit_class and not distilled:
        raise ValueError(f"the model is a subclass of VisionTransformer ({_name(model)}); not supported")
    if distilled and (getattr(model, "num_reg_tokens", 0) or model.global_pool != "token"):
        raise ValueError("the model is distilled DeiT with register tokens or another pooling than its [CLS] and "
                         "distillation tokens; not supported")
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("the model has a dynamic image size (dynamic_img_size=True); not supported")
    pe = model.patch_embed
    if _name(pe) != "PatchEmbed":
        raise ValueError(f"the model's patch embedding is a {_name(pe)} (a hybrid stem?); only a plain PatchEmbed "
                         "(one convolution, kernel = stride = patch) is supported")
    if getattr(pe, "dynamic_img_pad", False) or not getattr(pe, "flatten", True):
        raise ValueError("the model pads images to the patch size (dynamic_img_pad=True); not supported")
    embed_norm = _norm(getattr(pe, "norm", None) or nn.Identity(), "the patch embedding's norm (patch_embed.norm)")
    conv = pe.proj
    patch = tuple(conv.kernel_size)
    if (not isinstance(conv, nn.Conv2d) or patch != tuple(conv.stride) or patch[0] != patch[1]
            or tuple(conv.padding) != (0, 0) or conv.groups != 1):
        raise ValueError("the model's patch embedding is not one square convolution with kernel = stride = patch")
    img_size = tuple(pe.img_size)
    if img_size[0] % patch[0] or img_size[1] % patch[1]:
        raise ValueError(f"the image size {img_size} is not divisible by the patch {patch[0]}; not supported")
    if getattr(model, "pos_embed", None) is None:
        raise ValueError("the model has no learned position embedding (pos_embed=None or rotary); not supported")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in GLOBAL_POOLS:
        pool = "map" if getattr(model, "attn_pool", None) is not None else model.global_pool
        raise ValueError(f"the model pools with global_pool={pool!r}; only 'token' and 'avg' are supported")
    if getattr(model, "pool_include_prefix", False):
        raise ValueError("the model averages the prefix tokens too (pool_include_prefix=True); not supported")

    final_norm = not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity))
    C = model.embed_dim
    norms = {embed_norm, _norm(model.norm_pre, "norm_pre"), _norm(model.norm, "norm"), _norm(model.fc_norm, "fc_norm")}
    acts = set()
    blocks = list(model.blocks)
    heads, hidden, layer_scale = set(), set(), set()
    qkv_bias = set()
    for l, block in enumerate(blocks):
        where = f"blocks.{l}"
        if _name(block) != "Block":
            post = " (post-norm: the norms after attention and MLP)" if _name(block) == "ResPostBlock" else ""
            raise ValueError(f"{where} is a {_name(block)}{post}; only timm's pre-norm Block is supported")
        attn, mlp = block.attn, block.mlp
        if _name(attn) != "Attention":
            raise ValueError(f"{where}.attn is a {_name(attn)}; only timm's Attention is supported")
        _identity(getattr(attn, "q_norm", None), f"a query norm ({where}.attn.q_norm)")
        _identity(getattr(attn, "k_norm", None), f"a key norm ({where}.attn.k_norm)")
        _identity(getattr(attn, "norm", None), f"an attention output norm ({where}.attn.norm)")
        if getattr(attn, "gate", None) is not None:
            raise ValueError(f"{where}.attn is gated; not supported")
        head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        if attn.qkv.out_features != 3 * C or abs(attn.scale - head_dim ** -0.5) > 1e-12 * head_dim ** -0.5:
            raise ValueError(f"{where}.attn has an attention width or scale other than C and 1/sqrt(C/H); not supported")
        if attn.proj.bias is None:
            raise ValueError(f"{where}.attn.proj has no bias (proj_bias=False); not supported")
        if _name(mlp) != "Mlp":
            raise ValueError(f"{where}.mlp is {_name(mlp)}; only an Mlp (two linear layers around an activation) "
                             "is supported")
        acts.add(_activation(mlp.act, where))
        _identity(getattr(mlp, "norm", None), f"an MLP norm ({where}.mlp.norm)")
        if mlp.fc1.bias is None or mlp.fc2.bias is None:
            raise ValueError(f"{where}.mlp has no biases; not supported")
        norms |= {_norm(block.norm1, f"{where}.norm1"), _norm(block.norm2, f"{where}.norm2")}
        scales = {_name(block.ls1), _name(block.ls2)}
        if scales - {"Identity", "LayerScale"} or len(scales) != 1:
            raise ValueError(f"{where} has layer scale {sorted(scales)}; only both ls1 and ls2 or neither is supported")
        heads.add(attn.num_heads)
        hidden.add(mlp.fc1.out_features)
        layer_scale.add(scales.pop())
        qkv_bias.add(attn.qkv.bias is not None)
    norms.discard(None)
    if len({kind for kind, _ in norms}) > 1:
        raise ValueError(f"the model mixes kinds of norm ({', '.join(sorted({kind for kind, _ in norms}))}); not supported")
    if len(norms) > 1 or len(heads) > 1 or len(hidden) > 1 or len(layer_scale) > 1 or len(qkv_bias) > 1 or len(acts) > 1:
        raise ValueError("the model's blocks differ from each other (norm eps, heads, MLP width or activation, layer "
                         "scale or qkv bias); not supported")
    (hidden,) = hidden
    mlp_ratio = hidden / C
    if int(C * mlp_ratio) != hidden:
        raise ValueError(f"the MLP width {hidden} is not int(C * mlp_ratio) for any float mlp_ratio; not supported")
    head = model.head
    heads_out = [head, *([model.head_dist] if distilled else [])]
    if not all(isinstance(h, (nn.Linear, nn.Identity)) for h in heads_out):
        raise ValueError(f"the model's head is a {_name(head)}; only a Linear (or none) is supported")
    kind, eps = norms.pop() if norms else ("layernorm", LN_EPS)  # the one kind and eps of every norm
    return dict(img_size=img_size, patch_size=patch[0], in_chans=conv.in_channels,
                num_classes=head.out_features if isinstance(head, nn.Linear) else 0, embed_dim=C,
                depth=len(blocks), num_heads=heads.pop(), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias.pop(),
                class_token=model.cls_token is not None, global_pool=model.global_pool,
                reg_tokens=getattr(model, "num_reg_tokens", 0), no_embed_class=model.no_embed_class,
                pre_norm=not isinstance(model.norm_pre, nn.Identity), fc_norm=not isinstance(model.fc_norm, nn.Identity)
                and isinstance(model.norm, nn.Identity), init_values=1.0 if layer_scale.pop() == "LayerScale" else None,
                norm_eps=eps, patch_bias=conv.bias is not None, norm=kind, act=acts.pop(), final_norm=final_norm,
                embed_norm=embed_norm is not None, dist_token=distilled)


def stochastic_modules(model: nn.Module) -> list[str]:
    """'name (Kind p=...)' for every module of ``model`` that drops activations, paths or patches
    in training mode: dropout, drop path, patch dropout with a probability above 0."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) or _name(module) in ("Dropout", "DropPath", "PatchDropout"):
            p = getattr(module, "p", getattr(module, "drop_prob", getattr(module, "prob", 0.0)))
            if p:
                found.append(f"{name} ({_name(module)} p={p:g})")
    return found


def _convert(model: nn.Module, cls: type, **settings: Any) -> Any:
    geometry = timm_geometry(model)
    dtypes = sorted({str(t.dtype) for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()})
    if len(dtypes) > 1:
        raise ValueError(f"the model's parameters and buffers have several dtypes ({', '.join(dtypes)}); convert "
                         "a model of one dtype (model.to(dtype)): the converted model has one")
    stochastic = stochastic_modules(model)
    if stochastic and model.training:
        raise ValueError(f"the model is in training mode with dropout or drop path ({', '.join(stochastic[:4])}"
                         f"{', ...' if len(stochastic) > 4 else ''}); gtp_ref's models apply none, so the converted "
                         "model would be deterministic where timm's is not: convert it in eval mode (model.eval()) "
                         "or build it with drop_rate=0, attn_drop_rate=0, proj_drop_rate=0, drop_path_rate=0")
    param = next(model.parameters())
    with torch.device(param.device):
        net = cls(**geometry, **settings)
    net.to(param.dtype).load_state_dict(model.state_dict(), strict=True)
    net.dropout_not_applied = tuple(stochastic)  # ViT.train(True) warns about them
    return net.train(model.training)


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
