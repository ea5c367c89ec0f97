"""Seeded inputs any language can regenerate: numpy's PCG64 ``default_rng(seed)`` streams.

Model weights follow the rule of the authors'-implementation vectors
(``vectors/gtp_official_visible.json``, header "weights"; the official-ToMe vectors use the same
rule): one Generator, state_dict keys in sorted (Python str) order, value = mean + std *
standard_normal(shape), then the images from the same Generator.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from gtp_ref.model import GTPViT
    from gtp_ref.tome import ToMeViT

VECTORS = Path(__file__).parent / "vectors"


def _mean_std(key: str, shape: Sequence[int]) -> tuple[float, float]:
    module, _, kind = key.rpartition(".")
    module = module.rsplit(".", 1)[-1]
    if key in ("cls_token", "pos_embed"):
        return 0.0, 0.5
    if len(shape) == 1 and "norm" in module:
        return (1.0, 0.1) if kind == "weight" else (0.0, 0.02)
    if kind == "bias":
        return 0.0, 0.02
    if kind == "weight" and len(shape) >= 2:
        gain = 2.0 if key.endswith("attn.qkv.weight") else 1.0
        return 0.0, gain / np.sqrt(np.prod(shape[1:]))
    raise ValueError(f"no weight rule for {key} {shape}")


def weights_and_images(
    seed: int, shapes: dict[str, Sequence[int]], batch: int, in_chans: int, img_size: int | Sequence[int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(state_dict of float64 tensors, images [B, C, H, W] float64) from ``seed``."""
    rng = np.random.default_rng(seed)
    state = {}
    for key in sorted(shapes):
        mean, std = _mean_std(key, shapes[key])
        state[key] = torch.from_numpy(mean + std * rng.standard_normal(shapes[key]))
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return state, torch.from_numpy(rng.standard_normal((batch, in_chans, h, w)))


def flat_model(config: dict[str, Any], cls: type | None = None) -> Any:
    """The model of a vector's flat config -- backbone fields (``gtp_ref.config.ViTConfig``'s) and
    the method's settings (GTP's, or ToMe's ``r``) by name, as the vectors record them: a GTPViT
    (or ``cls``, e.g. ToMeViT)."""
    from gtp_ref.config import OWNER, ViTConfig
    from gtp_ref.model import GTPViT

    backbone = {
        k: (tuple(v) if isinstance(v, list) and k == "img_size" else v)
        for k, v in config.items()
        if k in OWNER or k in ("embed_dim", "depth")
    }
    method = {k: v for k, v in config.items() if k not in backbone}
    return (cls or GTPViT)(ViTConfig.of(**backbone), **method)


def model_for(vector: dict[str, Any], **overrides: Any) -> tuple["GTPViT", torch.Tensor]:
    """A float64 GTPViT with the vector's config and seeded weights, and its images."""
    model = flat_model({**vector["config"], **overrides}).double().eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    cfg = vector["config"]
    state, images = weights_and_images(
        vector["seed"], shapes, vector["batch"], cfg["in_chans"], cfg["img_size"]
    )
    model.load_state_dict(state, strict=True)
    return model, images


def official_vectors() -> list[dict[str, Any]]:
    return json.loads((VECTORS / "gtp_official_visible.json").read_text())["vectors"]


def tome_vectors() -> list[dict[str, Any]]:
    """The vectors computed by running the official ToMe on timm (``tome_official_visible.json``)."""
    return json.loads((VECTORS / "tome_official_visible.json").read_text())["vectors"]


def tome_model_for(vector: dict[str, Any]) -> tuple["ToMeViT", torch.Tensor]:
    """A float64 ToMeViT with the vector's config and seeded weights (same rule), and its images."""
    from gtp_ref.tome import ToMeViT

    model = flat_model(vector["config"], ToMeViT).double().eval()
    cfg = vector["config"]
    state, images = weights_and_images(
        vector["seed"], vector["state_dict_shapes"], vector["batch"], cfg["in_chans"], cfg["img_size"]
    )
    model.load_state_dict(state, strict=True)
    return model, images
