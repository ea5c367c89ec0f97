"""A model's evaluation preprocessing with Pillow and torch (no torchvision): read an image, resize
its shorter side to size / crop_pct, crop the centre to the model's input size, scale to [0, 1]
and normalise with the model's mean and std -- what timm's evaluation transform does.

``Preprocessing.of(model)`` reads timm's ``pretrained_cfg`` where the model has one, else uses
the ImageNet defaults (DeiT / ViT: crop_pct 0.875, bicubic) at the model's image size.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def load_image(path: str | Path) -> Any:
    """The image at ``path`` as an RGB ``PIL.Image``; ValueError (one line) if it cannot be read."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"cannot read the image {str(path)!r}: {e}") from None


@dataclass(frozen=True)
class Preprocessing:
    """input_size (H, W); crop_pct: the centre crop's share of the resized image; interpolation:
    Pillow's filter by name; mean / std per channel."""

    input_size: tuple[int, int]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def of(cls, model: Any) -> "Preprocessing":
        """The preprocessing of a timm model (its ``pretrained_cfg``) or of a ``gtp_ref`` ViT."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if hasattr(getattr(model, "patch_embed", None), "img_size"):  # timm: the size the model was built for
            size = tuple(model.patch_embed.img_size)
        elif hasattr(model, "img_size"):  # gtp_ref's ViT
            size = tuple(model.img_size)
        else:
            size = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
        interpolation = cfg.get("interpolation", "bicubic")
        return cls(input_size=(int(size[0]), int(size[1])), crop_pct=float(cfg.get("crop_pct", 0.875)),
                   interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                   mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))

    def crop(self, image: Any) -> Any:
        """Resize (shorter side to size / crop_pct, as timm) and centre-crop: a PIL image of input_size."""
        from PIL import Image
        H, W = self.input_size
        resample = getattr(Image.Resampling, self.interpolation.upper())
        if H == W:
            scale = math.floor(H / self.crop_pct)
            w, h = image.size
            # the longer side truncated, as torchvision's Resize does
            new = (scale, max(1, int(h * scale / w))) if w <= h else (max(1, int(w * scale / h)), scale)
        else:
            new = (math.floor(W / self.crop_pct), math.floor(H / self.crop_pct))
        image = image.resize(new, resample)
        left, top = round((image.size[0] - W) / 2), round((image.size[1] - H) / 2)  # as CenterCrop
        return image.crop((left, top, left + W, top + H))

    def __call__(self, image: Any) -> Tensor:
        """PIL image -> normalised tensor [3, H, W] (float32)."""
        crop = self.crop(image)
        x = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(crop.size[1], crop.size[0], 3)
        x = x.permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
