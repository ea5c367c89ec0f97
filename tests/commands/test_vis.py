"""``python -m gtp_ref.apps.vis`` and the preprocessing it shares with the evaluation, on a
synthetic image."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from examples.synthetic_scene import scene as synthetic_scene
from gtp_ref import GTPViT
from gtp_ref.apps import vis
from gtp_ref.apps.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, load_image
from gtp_ref.apps.vis import draw, shading
from gtp_ref.config import ViTConfig
from tests.helpers import command


def scene(path, H=96, W=128):
    """The example's synthetic scene (sky, field, a red disk, a blue square), small, as a PNG."""
    Image.fromarray(synthetic_scene(H, W)).save(path)
    return path


def test_preprocessing_resizes_crops_and_normalises(tmp_path):
    pre = Preprocessing(input_size=(32, 32), crop_pct=0.875)
    Image.new("RGB", (80, 40), (255, 128, 0)).save(tmp_path / "flat.png")
    x = pre(load_image(tmp_path / "flat.png"))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    want = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x, want[:, None, None].expand_as(x), atol=1e-6)
    assert pre.crop(load_image(tmp_path / "flat.png")).size == (32, 32)
    model = GTPViT(ViTConfig.of(img_size=(32, 48), patch_size=16, embed_dim=8, depth=1, num_heads=2))
    assert Preprocessing.of(model).input_size == (32, 48)


def test_an_unreadable_image_is_one_line(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the image"):
        load_image(tmp_path / "broken.png")


def test_the_overlay_shades_exactly_the_propagated_patches_by_block():
    model = GTPViT(
        ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2),
        num_prop=[3, 2, 4],
        sparsity=0.6,
        token_scale=True,
    ).eval()
    with torch.no_grad():
        trace = model.forward_trace(torch.randn(1, 3, 32, 32), record=True)
    blocks = shading(trace, model.grid)
    assert sorted((blocks == l).sum() for l in range(3)) == [2, 3, 4]
    import matplotlib.pyplot as plt

    shade = draw(np.zeros((32, 32, 3)), trace, model.grid, 8, 3, "all", "test", "/dev/null")
    for r in range(4):
        for c in range(4):
            patch = shade[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            if blocks[r, c] < 0:
                assert (patch[..., 3] == 0).all(), "kept patches are not shaded"
            else:
                assert np.allclose(patch[..., :3], plt.get_cmap("viridis")(blocks[r, c] / 2)[:3])


def test_vis_adds_the_unreduced_and_the_restored_features(tmp_path):
    image, out = scene(tmp_path / "scene.png"), tmp_path / "gtp.png"
    r = command(vis.main, image, "--preset", "deit_tiny", "--num-prop", "8", "--features", "--out", out)
    assert r.returncode == 0 and f"wrote {out}" in r.stdout, r.stderr
    png = out.read_bytes()
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1400, 1300)


def test_vis_command_draws_the_figure(tmp_path):
    image, out = scene(tmp_path / "scene.png"), tmp_path / "gtp.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gtp_ref.apps.vis",
            str(image),
            "--preset",
            "deit_tiny",
            "--num-prop",
            "8",
            "--block",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and f"wrote {out}" in r.stdout, r.stderr
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1400, 650)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "--preset", "deit_tiny", "--out", "o.png"], "cannot read the image"),
        (["IMAGE", "--preset", "deit_tiny", "--out", "o.pdf"], "--out 'o.pdf': must end in .png"),
        (
            ["IMAGE", "--preset", "deit_tiny", "--num-prop", "100", "--out", "o.png"],
            "num_prop=100 propagates 100",
        ),
        (
            ["IMAGE", "--preset", "deit_tiny", "--block", "12", "--out", "o.png"],
            r"--block '12': a block index in \[0, 11\]",
        ),
        (
            ["IMAGE", "--preset", "deit_tiny", "--checkpoint", "x.pth", "--out", "o.png"],
            "--checkpoint goes with --timm",
        ),
        (
            ["BOMB", "--preset", "deit_tiny", "--out", "o.png"],
            "cannot read the image .*bomb.png': DecompressionBombError",
        ),
        (["IMAGE", "--preset", "deit_tiny", "--alpha", "nan", "--out", "o.png"], "alpha=nan"),
    ],
)
def test_vis_bad_arguments_are_one_line(tmp_path, args, message):
    image = scene(tmp_path / "scene.png")
    from tests.imagefiles import bad_images

    bomb = bad_images(tmp_path / "bad")["bomb.png"]
    args = [str(image) if a == "IMAGE" else str(bomb) if a == "BOMB" else a for a in args]
    r = command(vis.main, *args, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr
