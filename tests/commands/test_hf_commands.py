"""The commands on Hugging Face models (``--hf``: a ``save_pretrained`` folder or a model type, no
download): eval, bench throughput and vis take one as they take ``--timm``; ``support --hf``
surveys transformers' model types.  Skipped, with the reason, where transformers cannot be
imported."""

import json

import pytest
import torch

from gtp_ref.apps import eval as eval_command
from gtp_ref.apps import support, vis
from gtp_ref.apps.bench import __main__ as bench
from gtp_ref.apps.loading import HFResult, backbone_of, gtp_from, hf_model, tome_from
from gtp_ref.apps.preprocess import Preprocessing
from tests.helpers import HF_TINY, command
from tests.imagefiles import image_folder

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'gtp-ref[hf]')")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A ViT classifier of 3 classes and its image processor, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(**HF_TINY, num_labels=3)).save_pretrained(
        folder
    )
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_a_saved_folder_loads_with_its_weights_and_preprocessing(saved):
    net = hf_model(str(saved))
    original = transformers.ViTForImageClassification.from_pretrained(saved).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), original(pixel_values=x).logits)
        assert (gtp_from(net, num_prop=0, sparsity=1.0)(x) - net(x)).abs().max() < 1e-5
        assert tome_from(net, r=0)(x).shape == (2, 3)
    assert isinstance(net, HFResult) and net.num_classes == 3 and not net.model.training
    assert backbone_of(net).config.head.num_classes == 3
    # ViTImageProcessor: mean and std 0.5, bilinear (2), resized to the square
    assert Preprocessing.of(net) == Preprocessing(
        (32, 32), crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
    )


def test_an_image_processors_crop_gives_crop_pct():
    clip_like = {
        "do_center_crop": True,
        "size": {"shortest_edge": 256},
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "image_mean": [0.48, 0.46, 0.41],
        "image_std": [0.27, 0.26, 0.28],
    }
    pre = Preprocessing.of_hf(clip_like, (224, 224))
    assert pre.crop_pct == 224 / 256 and pre.interpolation == "bicubic" and pre.mean == (0.48, 0.46, 0.41)
    assert Preprocessing.of_hf(None, (64, 48)) == Preprocessing((64, 48))  # the ImageNet defaults


def test_a_model_type_builds_with_random_weights_and_classes():
    net = hf_model("vit", num_classes=4)
    assert type(net.model).__name__ == "ViTForImageClassification" and net.num_classes == 4
    base = transformers.Dinov2Model(transformers.Dinov2Config(**HF_TINY))
    assert HFResult(base).num_classes == 0  # a base model: its result is its pooled output


@pytest.mark.parametrize(
    "name, message",
    [("no_such_type", "is neither a folder with a config.json"), ("swin", "SwinModel: windowed attention")],
)
def test_what_cannot_be_loaded_or_converted_is_one_line(name, message):
    with pytest.raises(ValueError, match=message):
        hf_model(name)


def test_eval_takes_a_saved_hf_classifier(saved, tmp_path):
    root = image_folder(tmp_path / "val", per_class=2, size=40)
    out = tmp_path / "e.json"
    r = command(
        eval_command.main,
        root,
        "--hf",
        saved,
        "--methods",
        "baseline",
        "gtp",
        "tome",
        "--num-prop",
        "0",
        "--sparsity",
        "1",
        "--workers",
        "1",
        "--json-out",
        out,
    )
    assert r.returncode == 0, r.stderr[-1000:]
    doc = json.loads(out.read_text())
    rows = {row["method"]: row for row in doc["rows"]}
    assert doc["images"] == 6 and doc["model"] == f"{saved} (Hugging Face)"
    # nothing removed: GTP and ToMe classify every image as the HF model does
    assert rows["gtp"]["top1"] == rows["baseline"]["top1"] == rows["tome"]["top1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hf", "{saved}", "--checkpoint", "x.pth"], "--checkpoint goes with --timm"),
        (["--hf", "{saved}", "--num-classes", "5"], "--num-classes 5: the model saved in"),
        (["--hf", "swin"], "SwinModel: windowed attention"),
        (["--hf", "{base}", "--num-prop", "1"], "the model has 0 classes"),
    ],
)
def test_eval_refuses_what_it_cannot_evaluate_in_one_line(saved, tmp_path, args, message):
    root = image_folder(tmp_path / "val", per_class=1, size=16)
    base = tmp_path / "dinov2"  # a base model: no classifier
    transformers.Dinov2Model(transformers.Dinov2Config(**HF_TINY)).save_pretrained(base)
    fill = {"{saved}": str(saved), "{base}": str(base)}
    r = command(eval_command.main, root, *[fill.get(a, a) for a in args])
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1000:]
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1, r.stderr


def test_the_throughput_benchmark_measures_an_hf_model(saved, tmp_path):
    out = tmp_path / "rows.json"
    r = command(
        bench.main,
        "throughput",
        "--hf",
        saved,
        "--num-prop",
        "1",
        "--batches",
        "2",
        "--repeats",
        "1",
        "--methods",
        "baseline_fused",
        "gtp_fast",
        "tome",
        "--json-out",
        out,
    )
    assert r.returncode == 0, r.stderr[-1000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(row["method"], row["num_prop"]) for row in rows} == {
        ("baseline_fused", 0),
        ("gtp_fast", 1),
        ("tome", 1),
    }
    assert all(row["model"] == str(saved) and row["img_per_s"] > 0 for row in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hf", "dinov3_vit", "--methods", "tome"], "--methods tome with --hf: ToMe is not defined"),
        (["--hf", "vit", "--timm", "deit_tiny_patch16_224"], "--timm and --hf"),
        (["--hf", "vit", "--img-size", "64"], "--img-size goes with the presets"),
        (["--hf", "vit", "--checkpoint", "x.pth"], "--checkpoint needs --timm"),
        (["--hf", "swin"], "SwinModel: windowed attention"),
    ],
)
def test_the_throughput_benchmark_checks_an_hf_model_first(args, message):
    r = command(bench.main, "throughput", *args, "--repeats", "1")
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1000:]
    assert r.stdout == "", "nothing measured"


def test_vis_draws_gtp_on_an_hf_model(saved, tmp_path):
    image = next((image_folder(tmp_path / "images", per_class=1) / "c0").iterdir())
    out = tmp_path / "v.png"
    r = command(vis.main, image, "--hf", saved, "--num-prop", "1", "--out", out)
    assert r.returncode == 0, r.stderr[-1000:]
    from PIL import Image

    with Image.open(out) as image:
        assert image.size[0] > 400


def test_the_hf_survey_converts_the_supported_types_and_names_every_refusal():
    """``python -m gtp_ref.apps.support --hf`` on a few model types: each converted or refused with
    the reason; a vision part that AutoModel does not map alone is built by its own class."""
    types = ["vit", "metaclip_2_vision_model", "swin", "aimv2_vision_model"]
    rows = {row["name"]: row for row in support.survey_hf(types)}
    assert [t for t in types if rows[t]["converted"]] == types[:2], rows
    assert rows["metaclip_2_vision_model"]["module"] == "MetaClip2VisionModel"
    assert "windowed attention" in rows["swin"]["reason"]
    assert "not one from_hf reads and tests" in rows["aimv2_vision_model"]["reason"]
    table = support.table(list(rows.values()), "from_hf", "transformers")
    assert "from_hf converts 2 of the 4 models" in table and "refused, by reason" in table
    with pytest.raises(ValueError, match="no_such_type not model types of transformers"):
        support.survey_hf(["no_such_type"])
