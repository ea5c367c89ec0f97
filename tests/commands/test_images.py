"""Reading and preprocessing one image: any error Pillow raises for a file is a one-line
ValueError naming it (so that ``eval`` skips it and ``vis`` refuses it), high-bit-depth images
are scaled to 8 bits rather than clipped, and a long thin image costs what a normal one does."""

import numpy as np
import pytest
from PIL import Image

from gtp_ref.apps.preprocess import Preprocessing, load_image
from tests.imagefiles import bad_images


@pytest.mark.parametrize(
    "name, error",
    [
        ("bomb.png", "DecompressionBombError"),
        ("bomb_warning.png", "DecompressionBombWarning"),
        ("not_an_image.jpg", "UnidentifiedImageError"),
        ("broken_stream.png", "OSError"),
    ],
)
def test_every_refusal_of_pillow_is_one_valueerror_naming_the_file(tmp_path, name, error):
    path = bad_images(tmp_path)[name]
    with pytest.raises(ValueError, match=f"cannot read the image '{path}': {error}") as info:
        load_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "raised", [SyntaxError("broken PNG file"), ValueError("bad"), EOFError(), KeyError("x")]
)
def test_other_errors_of_pillow_too(tmp_path, monkeypatch, raised):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(Image, "open", fail)
    with pytest.raises(ValueError, match=f"cannot read the image '{path}': {type(raised).__name__}"):
        load_image(path)


@pytest.mark.parametrize(
    "mode, values, want",
    [
        ("I;16", np.array([[0, 32896, 65535]], np.uint16), [0, 128, 255]),  # 16 bits by 0..65535
        ("I", np.array([[0, 32896, 65535]], np.int32), [0, 128, 255]),  # a 16-bit image held as I
        ("I", np.array([[-1000, 0, 1000]], np.int32), [0, 128, 255]),  # beyond 16 bits: its own range
        ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # 0..1
        ("F", np.array([[-2.0, np.nan, 2.0]], np.float32), [0, 0, 255]),  # its own range, NaN as the minimum
    ],
)
def test_high_bit_depth_is_scaled_not_clipped(tmp_path, mode, values, want):
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    got = np.asarray(load_image(path))
    assert got.shape == (1, 3, 3) and got.dtype == np.uint8
    assert got[0, :, 0].tolist() == want and (got[..., 0] == got[..., 2]).all()


def test_a_16_bit_png_is_not_white(tmp_path):
    """A 16-bit grayscale PNG (mode I;16): Pillow's own convert('RGB') saturates it at 255."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = np.asarray(load_image(tmp_path / "ramp.png"))[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp / 65535 * 255)).max() == 0
    assert np.asarray(Image.open(tmp_path / "ramp.png").convert("RGB")).mean() > 254  # what it used to be


def test_a_long_thin_image_costs_what_a_normal_one_does(monkeypatch):
    """1 x 4000 px: resized as timm does, the image would be 256 x 1,024,000 px (786 MB); here no
    resize makes more pixels than a few crops, and the result is the crop timm's resize gives."""
    sizes = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(size)
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    pre = Preprocessing(input_size=(224, 224))
    column = np.linspace(0, 255, 4000)[:, None, None].repeat(3, axis=2).repeat(1, axis=1)
    thin = Image.fromarray(column.astype(np.uint8))  # 1 wide, 4000 high
    x = pre(thin)
    assert x.shape == (3, 224, 224) and max(w * h for w, h in sizes) <= 16 * 224 * 224, sizes
    # the same as resizing the whole image (a smaller one here) and cropping, up to rounding
    short = Image.fromarray(column[:400].astype(np.uint8))
    sizes.clear()
    want = np.asarray(original(short, (256, 102400), Image.Resampling.BICUBIC).crop((16, 51088, 240, 51312)))
    got = np.asarray(pre.crop(short))
    assert max(w * h for w, h in sizes) <= 16 * 224 * 224
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_normal_images_are_resized_exactly_as_timm_does():
    """Below the blow-up limit, the whole image is resized, then cropped (timm's transform, bit for bit)."""
    rng = np.random.default_rng(0)
    for w, h in ((400, 300), (300, 400), (224, 224), (37, 400)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        pre = Preprocessing(input_size=(224, 224))
        scale = 256
        new = (scale, int(h * scale / w)) if w <= h else (int(w * scale / h), scale)
        left, top = round((new[0] - 224) / 2), round((new[1] - 224) / 2)
        want = np.asarray(
            image.resize(new, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
        )
        assert np.array_equal(np.asarray(pre.crop(image)), want), (w, h)
