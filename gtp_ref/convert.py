"""What every converter shares: a foreign model read into the backbone (``Backbone``: config,
state_dict in the backbone's layout, a hybrid's stem) and a reduced model built on it
(``build``), on the model's device, in its dtype and mode.

``gtp_ref.timm_models`` reads timm's models, ``gtp_ref.hf_models`` Hugging Face's; both hand
their ``Backbone`` to ``build``.  Neither library is imported here.
"""

from typing import Any, NamedTuple

import torch
from torch import nn

from gtp_ref.config import ViTConfig


class Backbone(NamedTuple):
    """What a model is built from: its config, its state_dict in the backbone's layout, and a
    hybrid ViT's stem (the convolutional module the config cannot describe; None without one)."""

    config: ViTConfig
    state: dict[str, torch.Tensor]
    stem: nn.Module | None


def stochastic_modules(model: nn.Module) -> list[str]:
    """'name (Kind p=...)' for every module of ``model`` that drops activations, paths or patches
    in training mode with a probability above 0: dropout, drop path (timm's ``DropPath``, the
    ``*DropPath`` of transformers), patch dropout."""
    found = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.Dropout) or kind.endswith(("Dropout", "DropPath")):
            p = getattr(module, "p", getattr(module, "drop_prob", getattr(module, "prob", 0.0)))
            if isinstance(p, (int, float)) and p > 0:
                found.append(f"{name} ({kind} p={p:g})")
    return found


def build(
    model: nn.Module,
    backbone: Backbone,
    cls: type,
    stochastic: list[str],
    how_to_disable: str,
    **settings: Any,
) -> Any:
    """``cls(backbone.config, **settings)`` (a ``GTPViT``, ``ToMeViT``, ...) with the backbone's
    weights, on ``model``'s device, in its dtype and mode.  ``stochastic``: what ``model`` drops in
    training mode (the built model applies none, so a model in training mode with any is refused,
    the message ending in ``how_to_disable``)."""
    dtypes = sorted({str(t.dtype) for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()})
    if len(dtypes) > 1:
        raise ValueError(
            f"the model's parameters and buffers have several dtypes ({', '.join(dtypes)}); convert "
            "a model of one dtype (model.to(dtype)): the converted model has one"
        )
    if stochastic and model.training:
        raise ValueError(
            f"the model is in training mode with dropout or drop path ({', '.join(stochastic[:4])}"
            f"{', ...' if len(stochastic) > 4 else ''}); gtp_ref's models apply none, so the converted "
            f"model would be deterministic where yours is not: convert it in eval mode (model.eval()) "
            f"or {how_to_disable}"
        )
    param = next(model.parameters())
    with torch.device(param.device):
        net = cls(backbone.config, stem=backbone.stem, **settings)
    net.to(param.dtype).load_state_dict(
        {k: v.to(param.dtype) for k, v in backbone.state.items()}, strict=True
    )
    net.dropout_not_applied = tuple(stochastic)  # ViT.train(True) warns about them
    return net.train(model.training)
