"""The authors'-implementation vectors (tests/data/gtp_official_visible.json) and their weights.

Weights and images are regenerated from each vector's seed by the procedure in the file's
header: one numpy Generator, keys in sorted order, value = mean + std * standard_normal.
"""
import json
from pathlib import Path

import numpy as np
import torch

from gtp_ref import GTPViT

PATH = Path(__file__).parent / "data" / "gtp_official_visible.json"


def load():
    return json.loads(PATH.read_text())


def _mean_std(key, shape):
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


def weights_and_images(vector):
    """(state_dict of float64 tensors, images [B, C, H, W] float64) for one vector."""
    rng = np.random.default_rng(vector["seed"])
    state = {}
    for key in sorted(vector["state_dict_shapes"]):
        shape = vector["state_dict_shapes"][key]
        mean, std = _mean_std(key, shape)
        state[key] = torch.from_numpy(mean + std * rng.standard_normal(shape))
    cfg = vector["config"]
    images = rng.standard_normal((vector["batch"], cfg["in_chans"], cfg["img_size"], cfg["img_size"]))
    return state, torch.from_numpy(images)


def model_for(vector, **overrides):
    model = GTPViT(**{**vector["config"], **overrides}).double().eval()
    state, images = weights_and_images(vector)
    model.load_state_dict(state, strict=True)
    return model, images
