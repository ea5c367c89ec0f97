"""A model's evaluation preprocessing with Pillow and torch (no torchvision): read an image, resize
its shorter side to size / crop_pct, crop the centre to the model's input size, scale to [0, 1]
and normalise with the model's mean and std -- what timm's evaluation transform does.

``Preprocessing.of(model)`` reads timm's ``pretrained_cfg`` where the model has one, else uses
the ImageNet defaults (DeiT / ViT: crop_pct 0.875, bicubic) at the model's image size;
``Preprocessing.of_hf`` reads a Hugging Face image processor's config.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow's resampling filters by number (what an HF image processor's ``resample`` holds)
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
MAX_BLOW_UP = 16  # a resize beyond this many times the crop's pixels resizes the crop's region only


# Pillow's modes of more than 8 bits per pixel, which ``convert("RGB")`` would clip to 255
HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def load_image(path: str | Path) -> Any:
    """The image at ``path`` as an 8-bit RGB ``PIL.Image``; ValueError (one line) for any error
    Pillow raises for it (unreadable, truncated, a decompression bomb -- its warning included,
    not only its error -- ...).  High-bit-depth images are scaled to 8 bits (``to_8_bit``)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return (to_8_bit(image) if image.mode in HIGH_BIT_DEPTH else image).convert("RGB")
    except Exception as e:  # noqa: BLE001 -- whatever one file makes Pillow raise concerns that file only
        raise ValueError(
            f"cannot read the image {str(path)!r}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        ) from None


def to_8_bit(image: Any) -> Any:
    """A high-bit-depth grayscale image (``I;16*``, ``I``, ``F``) as 8-bit ``L``, scaled by its
    range, not clipped: 16-bit modes by 0..65535; ``I`` (how Pillow holds 16- and 32-bit
    integer images) by 0..65535 where its values fit, else by its own min..max; ``F`` by 0..1
    where its values fit, else by its min..max (NaN as the minimum)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and lo >= 0 and hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    scaled = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


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
        """The preprocessing of a timm model (its ``pretrained_cfg``), of a ``gtp_ref`` ViT, or a
        model's own (its ``preprocessing``: ``gtp_ref.apps.loading.HFResult``'s)."""
        if isinstance(getattr(model, "preprocessing", None), Preprocessing):
            return model.preprocessing
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if hasattr(getattr(model, "patch_embed", None), "img_size"):  # timm: the size the model was built for
            size = tuple(model.patch_embed.img_size)
        elif hasattr(model, "config"):  # gtp_ref's ViT
            size = tuple(model.config.patches.img_size)
        else:
            size = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
        interpolation = cfg.get("interpolation", "bicubic")
        return cls(
            input_size=(int(size[0]), int(size[1])),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        )

    @classmethod
    def of_hf(cls, processor: dict[str, Any] | None, input_size: tuple[int, int]) -> "Preprocessing":
        """The preprocessing of an HF model at ``input_size`` (the size it is built for) from its
        image processor's ``preprocessor_config.json`` (None: the defaults): its mean, std and
        resampling filter; a centre crop of ``crop_size`` out of the shorter side resized to
        ``size["shortest_edge"]`` gives crop_pct, any other resize crop_pct 1 (HF's ViT processor
        resizes to the square, squashing a non-square image; this keeps its aspect)."""
        size_hw = (int(input_size[0]), int(input_size[1]))
        if processor is None:
            return cls(input_size=size_hw)
        p = processor
        size, crop = p.get("size") or {}, p.get("crop_size") or {}
        crop_pct = 1.0
        if (
            p.get("do_center_crop")
            and isinstance(size, dict)
            and "shortest_edge" in size
            and crop.get("height")
        ):
            crop_pct = min(1.0, crop["height"] / size["shortest_edge"])
        resample = p.get("resample", 3)
        return cls(
            input_size=size_hw,
            crop_pct=crop_pct,
            interpolation=PIL_FILTERS.get(resample, "bicubic") if isinstance(resample, int) else "bicubic",
            mean=tuple(float(v) for v in p.get("image_mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in p.get("image_std", IMAGENET_STD)),
        )

    def crop(self, image: Any) -> Any:
        """Resize (shorter side to size / crop_pct, as timm) and centre-crop: a PIL image of input_size.

        Where the resized image would have more than ``MAX_BLOW_UP`` times the crop's pixels (a
        long, thin image: 1 x 4000 px would become 256 x 1,024,000), only the crop's region of the
        image is resized (Pillow's ``box``): what timm gives up to rounding, at the cost of a
        normal image."""
        from PIL import Image

        H, W = self.input_size
        resample = getattr(Image.Resampling, self.interpolation.upper())
        w, h = image.size
        if H == W:
            scale = math.floor(H / self.crop_pct)
            # the longer side truncated, as torchvision's Resize does
            new = (scale, max(1, int(h * scale / w))) if w <= h else (max(1, int(w * scale / h)), scale)
        else:
            new = (math.floor(W / self.crop_pct), math.floor(H / self.crop_pct))
        left, top = round((new[0] - W) / 2), round((new[1] - H) / 2)  # as CenterCrop
        if new[0] * new[1] > MAX_BLOW_UP * W * H:
            sx, sy = w / new[0], h / new[1]  # source pixels per resized pixel
            return image.resize((W, H), resample, box=(left * sx, top * sy, (left + W) * sx, (top + H) * sy))
        return image.resize(new, resample).crop((left, top, left + W, top + H))

    def __call__(self, image: Any) -> Tensor:
        """PIL image -> normalised tensor [3, H, W] (float32)."""
        crop = self.crop(image)
        x = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(crop.size[1], crop.size[0], 3)
        x = x.permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
