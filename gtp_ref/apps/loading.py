"""Models for the command-line tools: a timm model by name with a checkpoint, or a ``gtp_ref``
preset with a state_dict -- every failure one line (a ``ValueError``), before any work.

``read_state_dict(path)`` reads what ``torch.save(model.state_dict(), path)`` wrote, also inside
the usual wrappers (``{"model": ...}``, ``{"state_dict": ...}``), with ``weights_only=True``
(no code in a checkpoint runs).
"""

from pathlib import Path
from typing import Any

import torch
from torch import nn


def _one_line(e: BaseException, limit: int = 300) -> str:
    return " ".join(str(e).split())[:limit]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict saved at ``path`` -> {name: tensor}; ValueError (one line) if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r}: no such file") from None
    except Exception as e:  # noqa: BLE001 -- a pickle with code, a truncated file: one line each
        raise ValueError(f"{str(path)!r}: not a state_dict torch can read safely ({_one_line(e)})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r}: holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def timm_model(name: str, checkpoint: str | Path | None = None, **create: Any) -> nn.Module:
    """``timm.create_model(name, **create)`` (no download; e.g. ``num_classes``) with the checkpoint
    loaded strict, eval mode."""
    try:
        import timm
    except Exception as e:  # noqa: BLE001 -- a torchvision that does not match torch raises RuntimeError
        raise ValueError(
            f"timm cannot be imported ({type(e).__name__}: {_one_line(e)}); pip install 'gtp-ref[timm]'"
        ) from None
    try:
        net = timm.create_model(name, pretrained=False, **create)
    except Exception as e:  # noqa: BLE001 -- timm's errors for unknown names vary by version
        raise ValueError(f"timm cannot build {name!r}: {_one_line(e)}") from None
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{str(checkpoint)!r} does not fit {name}: {_one_line(e)}") from None
    return net.eval()


def preset_model(
    name: str, state_dict: str | Path | None = None, *, num_classes: int | None = None, **settings: Any
) -> nn.Module:
    """The ``gtp_ref`` preset ``name`` (``gtp_ref.config.PRESETS``; with ``num_classes`` classes
    where given) as a GTPViT with GTP ``settings`` and the state_dict loaded strict, eval mode."""
    from gtp_ref.config import PRESETS
    from gtp_ref.model import GTPViT

    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: one of {', '.join(PRESETS)}")
    config = PRESETS[name] if num_classes is None else PRESETS[name].replace(num_classes=num_classes)
    model = GTPViT(config, **settings)
    if state_dict is not None:
        state = read_state_dict(state_dict)
        try:
            model.load_state_dict(state)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{str(state_dict)!r} does not fit the preset {name}: {_one_line(e)}") from None
    return model.eval()
