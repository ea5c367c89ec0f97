"""How the tokens of a timm model are made, as the backbone's patch embedding: the checks and the
``gtp_ref.config.ViTConfig`` fields of timm's ``PatchEmbed`` / ``HybridEmbed`` and of
NaFlexVit's ``NaFlexEmbeds`` (for ``gtp_ref.timm_models``), and the NaFlexVit weights under the
backbone's names.

NaFlexVit embeds patches of any grid (a linear projection of each patch's pixels, a learned
position embedding resampled to the grid).  Converted, it runs one grid: that of its default
input size (``pretrained_cfg["input_size"]``; else the grid its position embedding was learned
for), with the projection as the equivalent convolution and the position embedding as timm adds
it to that grid's patches (resampled by timm's own code, once, at conversion).
"""

import copy
from typing import Any

import torch
from torch import nn


def name_of(obj: Any) -> str:
    return type(obj).__name__


def norm_kind(module: nn.Module, where: str) -> tuple[str, float] | None:
    """(kind, eps) of a LayerNorm with weight and bias or of an RmsNorm with a weight (timm's or
    torch's), None for an identity; ValueError otherwise."""
    if isinstance(module, nn.Identity):
        return None
    if name_of(module) in ("RmsNorm", "RMSNorm"):
        weight, shape = getattr(module, "weight", None), tuple(getattr(module, "normalized_shape", ()))
        if weight is None or len(shape) != 1 or getattr(module, "eps", None) is None:
            raise ValueError(f"{where} is an RmsNorm without a weight over the channels; not supported")
        return "rmsnorm", float(module.eps)
    # timm's LayerNorm subclasses nn's
    if type(module) is not nn.LayerNorm and name_of(module) != "LayerNorm":
        raise ValueError(f"{where} is a {name_of(module)}; only LayerNorm and RmsNorm are supported")
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise ValueError(f"{where} is a LayerNorm without weight and bias; not supported")
    return "layernorm", module.eps


def patch_embedding(model: nn.Module) -> dict[str, Any]:
    """The embedding's ``ViTConfig`` fields (and ``embed_norm`` as (kind, eps) or None, ``grid``) of a
    timm model with a ``patch_embed`` (PatchEmbed or HybridEmbed); ValueError for anything else."""
    pe = model.patch_embed
    if name_of(pe) not in ("PatchEmbed", "HybridEmbed"):
        raise ValueError(
            f"the model's patch embedding is a {name_of(pe)}; only a plain PatchEmbed (one convolution, "
            "kernel = stride = patch) or a HybridEmbed (a stem, then such a convolution) is supported"
        )
    if getattr(pe, "dynamic_img_pad", False):
        raise ValueError("the model pads images to the patch size (dynamic_img_pad=True); not supported")
    if not getattr(pe, "flatten", True) and not getattr(model, "dynamic_img_size", False):
        raise ValueError("the model's patch embedding keeps the patch grid (flatten=False); not supported")
    conv, hybrid = pe.proj, name_of(pe) == "HybridEmbed"
    if not isinstance(conv, nn.Conv2d) and not (hybrid and isinstance(conv, nn.Identity)):
        raise ValueError(
            f"the model's patch projection is a {name_of(conv)}; only a convolution is supported"
        )
    patch = tuple(conv.kernel_size) if isinstance(conv, nn.Conv2d) else (1, 1)
    if isinstance(conv, nn.Conv2d) and (
        patch != tuple(conv.stride)
        or patch[0] != patch[1]
        or tuple(conv.padding) != (0, 0)
        or conv.groups != 1
    ):
        raise ValueError(
            "the model's patch embedding is not one square convolution with kernel = stride = patch"
        )
    img_size, grid = tuple(pe.img_size), tuple(pe.grid_size)
    stem_stride = img_size[0] // (grid[0] * patch[0]) if hybrid else 1
    remainder = bool(img_size[0] % (patch[0] * stem_stride) or img_size[1] % (patch[0] * stem_stride))
    if (img_size[0] // (patch[0] * stem_stride), img_size[1] // (patch[0] * stem_stride)) != grid or (
        remainder and (hybrid or getattr(pe, "strict_img_size", True) is False)
    ):
        raise ValueError(
            f"the image size {img_size} does not give the model's grid {grid} of patches {patch[0]}"
            f"{f' times the stem stride {stem_stride}' if stem_stride > 1 else ''}; not supported"
        )
    stem = (
        dict(
            stem_stride=stem_stride,
            patch_proj=isinstance(conv, nn.Conv2d),
            stem_channels=conv.in_channels if isinstance(conv, nn.Conv2d) else model.embed_dim,
        )
        if hybrid
        else {}
    )
    reg = getattr(model, "reg_token", None)
    return dict(
        img_size=img_size,
        patch_size=patch[0],
        in_chans=getattr(pe, "in_chans", None) or conv.in_channels,
        **stem,
        allow_remainder=remainder,
        patch_bias=getattr(conv, "bias", None) is not None,
        embed_norm=norm_kind(getattr(pe, "norm", None) or nn.Identity(), "the patch embedding's norm"),
        class_token=model.cls_token is not None,
        reg_tokens=0 if reg is None else reg.shape[1],
        no_embed_class=getattr(model, "no_embed_class", False),
        pos_embed=getattr(model, "pos_embed", None) is not None,
        grid=grid,
    )


def stem_of(model: nn.Module) -> nn.Module | None:
    """A copy of a hybrid ViT's convolutional stem (timm's ``HybridEmbed.backbone``), else None."""
    backbone = getattr(getattr(model, "patch_embed", None), "backbone", None)
    return None if backbone is None else copy.deepcopy(backbone)


def naflex_embedding(model: nn.Module) -> dict[str, Any]:
    """The same for NaFlexVit's ``embeds``, converted for the grid of its default input size."""
    e = model.embeds
    if not e.is_linear or not isinstance(e.proj, nn.Linear) or getattr(e, "norm_input", None) is not None:
        raise ValueError(
            "the model's NaFlex embedding is not one linear projection of each patch's pixels; not supported"
        )
    if e.pos_embed_type not in ("learned", "factorized", "none"):
        raise ValueError(
            f"the model's NaFlex position embedding is {e.pos_embed_type!r}; only 'learned', "
            "'factorized' and none are supported"
        )
    grid = naflex_grid(model)
    patch = tuple(e.patch_size)
    if grid is None or patch[0] != patch[1]:
        raise ValueError(
            "the model's NaFlex embedding has no learned grid to convert for, or non-square patches; "
            "not supported"
        )
    reg = getattr(e, "reg_token", None)
    return dict(
        img_size=(grid[0] * patch[0], grid[1] * patch[1]),
        patch_size=patch[0],
        in_chans=model.in_chans,
        allow_remainder=False,
        patch_bias=e.proj.bias is not None,
        embed_norm=norm_kind(getattr(e, "norm", None) or nn.Identity(), "the patch embedding's norm"),
        class_token=e.cls_token is not None,
        reg_tokens=0 if reg is None else reg.shape[1],
        no_embed_class=True,
        pos_embed=e.pos_embed_type != "none",
        grid=grid,
    )


def naflex_grid(model: nn.Module) -> tuple[int, int] | None:
    """The grid NaFlexVit is converted for: its default input size's, else the grid its position
    embedding was learned for (None without either)."""
    e = model.embeds
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size is not None and size[1] % e.patch_size[0] == 0 and size[2] % e.patch_size[1] == 0:
        return size[1] // e.patch_size[0], size[2] // e.patch_size[1]
    if e.pos_embed_type == "learned":
        return tuple(e.pos_embed.shape[1:3])
    if e.pos_embed_type == "factorized":
        return e.pos_embed_y.shape[1], e.pos_embed_x.shape[1]
    return tuple(e.pos_embed_grid_size) if getattr(e, "pos_embed_grid_size", None) else None


def naflex_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NaFlexVit's ``embeds.*`` entries of ``state`` under the backbone's names: the linear patch
    projection as the equivalent convolution, [CLS] and registers, the norm, and the position
    embedding as the grid's patches receive it."""
    e, grid = model.embeds, naflex_grid(model)
    out = {k: v for k, v in state.items() if not k.startswith("embeds.")}
    P, C = e.patch_size[0], model.in_chans
    weight = (
        state["embeds.proj.weight"].reshape(-1, P, P, C)
        if getattr(e, "channels_last", True)
        else state["embeds.proj.weight"].reshape(-1, C, P, P).permute(0, 2, 3, 1)
    )
    out["patch_embed.proj.weight"] = weight.permute(0, 3, 1, 2).contiguous()  # (D, C, P, P)
    for key, value in state.items():
        if key in ("embeds.proj.bias", "embeds.cls_token", "embeds.reg_token") or key.startswith(
            "embeds.norm."
        ):
            target = key.replace("embeds.proj", "patch_embed.proj").replace("embeds.norm", "patch_embed.norm")
            out[target.replace("embeds.", "")] = value
    if e.pos_embed_type != "none":
        pos = torch.zeros(1, grid[0] * grid[1], model.embed_dim, dtype=weight.dtype, device=weight.device)
        apply = e._apply_learned_pos_embed if e.pos_embed_type == "learned" else e._apply_factorized_pos_embed
        apply(pos, grid_size=list(grid))  # adds the grid's position embedding in place
        out["pos_embed"] = pos
    return out
