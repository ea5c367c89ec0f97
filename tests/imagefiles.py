"""Image files the tests make: folders of coloured images for the evaluation, and files Pillow
refuses in each of its ways."""

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS = [(230, 20, 30), (10, 220, 40), (20, 30, 240)]  # class 0 red, 1 green, 2 blue


def image_folder(root: Path, per_class: int = 4, size: int = 40, colours=COLOURS, labels=None) -> Path:
    """root/c0, c1, c2 with uniformly coloured PNGs (``labels``: the folder of each image, else its
    colour's)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(len(colours)):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(per_class * len(colours)):
        colour = colours[i % len(colours)]
        noise = torch.randint(-8, 9, (size, size, 3), generator=g)
        pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
        folder = f"c{i % len(colours) if labels is None else labels[i]}"
        Image.fromarray(pixels).save(root / folder / f"img{i:03d}.png")
    return root


def chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(w: int, h: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares w x h RGB pixels."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def bad_images(folder):
    """{name: path} of files Pillow refuses in different ways."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "bomb.png": png_header_only(30000, 30000),  # DecompressionBombError
        "bomb_warning.png": png_header_only(10000, 10000),  # DecompressionBombWarning
        "not_an_image.jpg": b"not an image",
    }
    good = folder / "good.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(good)
    broken = bytearray(good.read_bytes())
    broken[broken.index(b"IDAT") + 6] ^= 0xFF  # the compressed data damaged
    files["broken_stream.png"] = bytes(broken)
    good.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}
