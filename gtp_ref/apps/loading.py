"""Models for the command-line tools: a timm model by name with a checkpoint, a Hugging Face model
(a saved folder or a model type), or a ``gtp_ref`` preset with a state_dict -- every failure one
line (a ``ValueError``), before any work.

``read_state_dict(path)`` reads what ``torch.save(model.state_dict(), path)`` wrote, also inside
the usual wrappers (``{"model": ...}``, ``{"state_dict": ...}``), with ``weights_only=True``
(no code in a checkpoint runs).
"""

import json
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


def hf_model(name: str, *, num_classes: int | None = None) -> "HFResult":
    """A Hugging Face vision model, eval mode, without a download, as an ``HFResult``: a folder
    ``save_pretrained`` wrote (its weights, the class its config names, the preprocessing of its
    ``preprocessor_config.json``), or a model type of the installed transformers (``vit``,
    ``dinov2``, ...: its default config, random weights; a classifier of ``num_classes`` where
    given).  ValueError (one line) for anything else."""
    try:
        import transformers
    except Exception as e:  # noqa: BLE001 -- a broken install raises more than ImportError
        raise ValueError(
            f"transformers cannot be imported ({type(e).__name__}: {_one_line(e)}); pip install 'gtp-ref[hf]'"
        ) from None
    folder = Path(name)
    processor = None
    try:
        if (folder / "config.json").is_file():
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            if num_classes is not None and num_classes != getattr(config, "num_labels", None):
                raise ValueError(
                    f"--num-classes {num_classes}: the model saved in {name!r} has "
                    f"{getattr(config, 'num_labels', 'no')} classes"
                )
            arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
            cls = getattr(transformers, arch, None) or transformers.AutoModel
            model = cls.from_pretrained(folder, local_files_only=True)
            if (folder / "preprocessor_config.json").is_file():
                processor = json.loads((folder / "preprocessor_config.json").read_text())
        elif name in transformers.CONFIG_MAPPING:
            extra = {} if num_classes is None else {"num_labels": num_classes}
            config = transformers.AutoConfig.for_model(name, **extra)
            auto = (
                transformers.AutoModel
                if num_classes is None
                else transformers.AutoModelForImageClassification
            )
            model = auto.from_config(config)
        else:
            raise ValueError(
                f"{name!r} is neither a folder with a config.json (save_pretrained) nor a model type of "
                "transformers (e.g. vit, dinov2, siglip_vision_model)"
            )
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- transformers' errors vary by version: one line
        raise ValueError(f"transformers cannot build {name!r}: {_one_line(e)}") from None
    return HFResult(model.eval(), processor)


class HFResult(nn.Module):
    """An HF model as a module that returns its result tensor (``gtp_ref.hf_models.hf_result``: its
    logits, image embedding or pooled output): the unreduced baseline the commands time and
    evaluate beside the converted models.  ``model``: the HF model; ``num_classes``: its
    classifier's (0 without one); ``preprocessing``: what its image processor does
    (``Preprocessing.of_hf``)."""

    def __init__(self, model: nn.Module, processor: dict[str, Any] | None = None) -> None:
        from gtp_ref.apps.preprocess import Preprocessing
        from gtp_ref.hf_models import hf_backbone

        super().__init__()
        config = hf_backbone(model).config  # and a ValueError here for what from_hf refuses
        self.model = model
        self.num_classes = config.head.num_classes  # 0: its result is an embedding, not logits
        self.preprocessing = Preprocessing.of_hf(processor, config.patches.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from gtp_ref.hf_models import hf_result

        return hf_result(self.model, x)


def backbone_of(net: nn.Module) -> Any:
    """What reduced models are built from (a ``gtp_ref.convert.Backbone``: the config, the
    state_dict in its layout, a hybrid's stem): a gtp_ref model's own, an ``HFResult``'s as
    ``from_hf`` reads it, or a timm model's as ``from_timm`` does (ValueError where the
    backbone cannot represent the model)."""
    from gtp_ref.convert import Backbone
    from gtp_ref.hf_models import hf_backbone
    from gtp_ref.timm_models import timm_backbone
    from gtp_ref.vit import ViT

    if isinstance(net, ViT):
        return Backbone(net.config, net.state_dict(), getattr(net.patch_embed, "backbone", None))
    if isinstance(net, HFResult):
        return hf_backbone(net.model)
    return timm_backbone(net)


def gtp_from(net: nn.Module, **gtp_settings: Any) -> nn.Module:
    """GTP on a timm model (``from_timm``) or an ``HFResult`` (``from_hf``)."""
    from gtp_ref.hf_models import from_hf
    from gtp_ref.timm_models import from_timm

    return from_hf(net.model, **gtp_settings) if isinstance(net, HFResult) else from_timm(net, **gtp_settings)


def tome_from(net: nn.Module, r: int) -> nn.Module:
    """ToMe on a timm model (``tome_from_timm``) or an ``HFResult`` (``tome_from_hf``)."""
    from gtp_ref.hf_models import tome_from_hf
    from gtp_ref.timm_models import tome_from_timm

    return tome_from_hf(net.model, r=r) if isinstance(net, HFResult) else tome_from_timm(net, r=r)
