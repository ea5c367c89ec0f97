"""The parts of a Hugging Face vision model that are not its blocks, read into the backbone's
config fields and state_dict: position embeddings (learned, bucketed, RoPE tables, relative-position
biases) and heads (the final norm, poolers, attention pools, classifiers), with the small readers
they share with ``gtp_ref.hf_models`` (a module's class name, the first attribute path present, a
norm's kind and eps).  transformers itself is not imported here.
"""

from typing import Any

import torch
from torch import nn


def name_of(obj: Any) -> str:
    return type(obj).__name__


def first_attr(obj: Any, *paths: str) -> Any:
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


def weight_of(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def norm_of(module: nn.Module | None, where: str) -> tuple[str, float] | None:
    """(kind, eps) of a LayerNorm with weight and bias or an RMSNorm with a weight; None for none."""
    if module is None or isinstance(module, nn.Identity):
        return None
    if "RMSNorm" in name_of(module) or "RmsNorm" in name_of(module):
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if eps is None or getattr(module, "weight", None) is None:
            raise ValueError(f"{where} is an {name_of(module)} without a weight or eps; not supported")
        return "rmsnorm", float(eps)
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise ValueError(
            f"{where} is a {name_of(module)}; only LayerNorm (with weight and bias) and RMSNorm are supported"
        )
    return "layernorm", float(module.eps)


def positions(emb: nn.Module, conv: nn.Conv2d, n: int, c: int, R: int, C: int) -> torch.Tensor | None:
    """The position embedding each token receives, [1, c + n, C] (prefix rows first; a register's
    row 0 where the model adds none to it, as DINOv2's), or None without one."""
    pos = first_attr(emb, "position_embeddings", "position_embedding.weight")
    if pos is None:
        return None
    pos = weight_of(pos).reshape(1, -1, C)
    if name_of(emb).startswith(
        ("Idefics3", "SmolVLM")
    ):  # bucketed positions: the full grid's, read from the module
        pixels = torch.zeros(
            1,
            conv.in_channels,
            *(s * conv.kernel_size[0] for s in grid_of(emb, n)),
            dtype=conv.weight.dtype,
            device=conv.weight.device,
        )
        mask = torch.ones(1, *grid_of(emb, n), dtype=torch.bool, device=pixels.device)
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


def rope_table(tower: nn.Module, conv: nn.Conv2d, img_size: tuple[int, int]) -> torch.Tensor | None:
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


def grid_of(emb: nn.Module, n: int) -> tuple[int, int]:
    side = getattr(emb, "num_patches_per_side", None) or int(round(n**0.5))
    return side, side


def attention_bias(
    tower: nn.Module, blocks: list[nn.Module], grid: tuple[int, int], c: int, H: int
) -> torch.Tensor | None:
    """BEiT's relative-position biases for the grid, [L, H, N, N], or None: each block's own plus
    the shared one, as HF's forward adds them."""
    shared = first_attr(tower, "shared_position_bias", "encoder.relative_position_bias")
    tables = []
    for block in blocks:
        own = first_attr(block, "relative_position_bias", "attention.attention.relative_position_bias")
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


def read_head(
    model: nn.Module, tower: nn.Module, role: str, C: int, c: int, state: dict[str, torch.Tensor], norms: set
) -> dict[str, Any]:
    """The head's fields of the config (pooling, final norm, pooler, classes), its weights into state."""
    final = first_attr(tower, "layernorm", "post_layernorm", "rms_norm", "norm")
    final = None if isinstance(final, nn.Identity) else final
    name = name_of(tower)
    clip_like = hasattr(tower, "pre_layrnorm")  # CLIP's post_layernorm: on the pooled [CLS] only
    fields: dict[str, Any] = dict(num_classes=0, final_norm="norm" if final is not None else "none")
    if final is not None:
        state.update({f"norm.{k}": weight_of(v) for k, v in final.state_dict().items()})
        norms.add(norm_of(final, "the final norm"))
    pooler = getattr(tower, "pooler", None)
    attn_head = getattr(tower, "head", None) if name.startswith("Siglip") else None
    if role == "classification":
        classifier = first_attr(model, "classifier", "cls_classifier")
        heads = [classifier] + (
            [model.distillation_classifier] if hasattr(model, "distillation_classifier") else []
        )
        if not all(isinstance(h, (nn.Linear, nn.Identity)) for h in heads):
            raise ValueError(f"the model's classifier is a {name_of(classifier)}; only a Linear is supported")
        mname = name_of(model)
        if mname.startswith("Dinov2"):
            raise ValueError(
                f"model is a {mname}: its classifier reads [CLS] and the mean of the patch tokens "
                "side by side; not supported (convert its Dinov2Model)"
            )
        if mname.startswith(("Beit", "Data2VecVision")):
            fields.update(
                mean_pool(
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
            state.update({f"head.{k}": weight_of(v) for k, v in classifier.state_dict().items()})
            if len(heads) > 1:
                state.update({f"head_dist.{k}": weight_of(v) for k, v in heads[1].state_dict().items()})
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
                "attn_pool.latent": weight_of(attn_head.probe),
                "attn_pool.q.weight": weight_of(w[:C]),
                "attn_pool.kv.weight": weight_of(w[C:]),
                "attn_pool.q.bias": weight_of(b[:C]),
                "attn_pool.kv.bias": weight_of(b[C:]),
            }
        )
        state.update(
            {
                f"attn_pool.proj.{k}": weight_of(v)
                for k, v in attn_head.attention.out_proj.state_dict().items()
            }
        )
        state.update(
            {f"attn_pool.norm.{k}": weight_of(v) for k, v in attn_head.layernorm.state_dict().items()}
        )
        state.update({f"attn_pool.mlp.{k}": weight_of(v) for k, v in attn_head.mlp.state_dict().items()})
        norms.add(norm_of(attn_head.layernorm, "the attention pool's norm"))
        return fields
    if name.startswith(("Beit", "Data2VecVision")) and pooler is not None:
        fields.update(mean_pool(pooler, state, norms, c))
    elif pooler is not None and hasattr(pooler, "dense"):  # ViT's: dense and tanh on the normed [CLS]
        if not c:
            raise ValueError(
                f"{name}.pooler reads the first token, and the model has no [CLS] token; not supported"
            )
        if name_of(pooler.activation) != "Tanh":
            raise ValueError(
                f"{name}.pooler's activation is {name_of(pooler.activation)}; only tanh is supported"
            )
        fields.update(global_pool="token", pooler="tanh")
        state.update({f"pooler.dense.{k}": weight_of(v) for k, v in pooler.dense.state_dict().items()})
    elif clip_like or name.startswith(("Dinov2", "DINOv3")):
        fields.update(global_pool="token")
    else:  # no pooled output: the mean of the final image tokens
        fields.update(global_pool="avg")
    if role == "projection":
        projection = model.visual_projection
        fields.update(num_classes=projection.out_features, head_bias=projection.bias is not None)
        state.update({f"head.{k}": weight_of(v) for k, v in projection.state_dict().items()})
    return fields


def mean_pool(pooler: nn.Module, state: dict[str, torch.Tensor], norms: set, c: int) -> dict[str, Any]:
    """BEiT's pooler: the normed mean of the patch tokens (use_mean_pooling), or the [CLS] token."""
    norm = getattr(pooler, "layernorm", None)
    if norm is None:
        return dict(global_pool="token")
    state.update({f"fc_norm.{k}": weight_of(v) for k, v in norm.state_dict().items()})
    norms.add(norm_of(norm, "the pooler's norm"))
    return dict(global_pool="avg", final_norm="fc_norm")
