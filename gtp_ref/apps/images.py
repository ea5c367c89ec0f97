"""The images of a labelled folder (``DIR/<class>/<image>``, torchvision's ImageFolder layout),
read in batches by a few threads, for ``python -m gtp_ref.apps.eval``."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# torchvision's ImageFolder extensions
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageFolder:
    """The images of ``root/<class>/...`` (searched recursively, torchvision's extensions, any case),
    sorted; ``classes``: the sorted class folder names, their indices the labels."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    empty: list[str] = field(default_factory=list)  # class folders without an image

    @classmethod
    def scan(cls, root: str | Path) -> "ImageFolder":
        """ValueError (one line) where root is missing, not a folder, or holds no image."""
        root = Path(root)
        if not root.exists():
            raise ValueError(f"{str(root)!r}: no such folder")
        if not root.is_dir():
            raise ValueError(f"{str(root)!r} is a file; give the folder that holds one folder per class")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"{str(root)!r} holds no class folders (expected {root}/<class>/<image>)")
        samples, empty = [], []
        for label, name in enumerate(classes):
            files = sorted(
                p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            samples += [(p, label) for p in files]
            if not files:
                empty.append(name)
        if not samples:
            raise ValueError(
                f"{str(root)!r}: its {len(classes)} class folders hold no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        return cls(root, classes, samples, empty)

    def subset(self, limit: int | None, seed: int = 0) -> list[tuple[Path, int]]:
        """The first ``limit`` images of a fixed random permutation (all of them for None)."""
        if limit is None or limit >= len(self.samples):
            return list(self.samples)
        order = torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(seed))[:limit]
        return [self.samples[i] for i in sorted(order.tolist())]


def batches(
    samples: list[tuple[Path, int]],
    preprocess: Callable[[Any], torch.Tensor],
    batch_size: int,
    on_bad: Callable[[Path, str], None],
    workers: int = 4,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images [b, 3, H, W], labels [b]) batches; an unreadable image is reported to ``on_bad`` and
    left out.  Images are read and preprocessed by ``workers`` threads (Pillow releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from gtp_ref.apps.preprocess import load_image

    def load(path: Path) -> torch.Tensor | str:
        try:
            image = load_image(path)  # any error Pillow raises: a ValueError naming the file
        except ValueError as e:
            return str(e)
        try:
            return preprocess(image)
        except Exception as e:  # noqa: BLE001 -- one image's failure is that image's, never the run's
            return (
                f"cannot preprocess the image {str(path)!r}: {type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}"
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            xs, ys = [], []
            for (path, label), x in zip(chunk, pool.map(load, [p for p, _ in chunk])):
                if isinstance(x, str):
                    on_bad(path, x)
                else:
                    xs.append(x)
                    ys.append(label)
            if xs:
                yield torch.stack(xs), torch.tensor(ys)
