"""Write a synthetic scene (sky, field, a red disk, a blue square) as a PNG: an input for
``python -m gtp_ref.apps.vis`` that needs no download.  ``python examples/synthetic_scene.py OUT.png``."""

import sys

import numpy as np
from PIL import Image


def scene(H: int = 256, W: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3))
    img[..., 0], img[..., 1], img[..., 2] = 0.45 + 0.2 * y / H, 0.65 + 0.2 * y / H, 0.95
    img[y > 0.66 * H] = [0.25, 0.6, 0.2]
    img[(x - 0.3 * W) ** 2 + (y - 0.4 * H) ** 2 < (0.14 * W) ** 2] = [0.85, 0.15, 0.1]
    img[(abs(x - 0.7 * W) < 0.12 * W) & (abs(y - 0.6 * H) < 0.12 * W)] = [0.15, 0.25, 0.8]
    return (img * 255).astype(np.uint8)


if __name__ == "__main__":
    Image.fromarray(scene()).save(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
