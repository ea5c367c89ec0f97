"""``python -m gtp_ref.apps.eval`` and ``gtp_ref.apps.eval.evaluate`` on image folders made here: a model
built to be right on them scores 100 % with every method, a model with its head shuffled 0 %,
random labels score near chance; bad folders and unreadable images are one line each."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gtp_ref import GTPSettings, GTPViT, paper_settings
from gtp_ref.apps import eval as eval_command
from gtp_ref.apps.eval import Setting, evaluate, reduced_model, settings_for
from gtp_ref.apps.images import ImageFolder
from gtp_ref.apps.loading import backbone_of, read_state_dict
from gtp_ref.config import PRESETS, ViTConfig
from tests.helpers import command
from tests.imagefiles import COLOURS, image_folder


def colour_classifier(state: dict, classes: int = 3) -> dict:
    """A timm-layout ViT state_dict made into a classifier of an image's dominant colour: the patch
    embedding averages each colour channel into features 0-2; the first block's attention is
    uniform (q = k = 0) and copies those features into every token, [CLS] included; every other
    residual branch is zero; the head reads features 0-2."""
    state = {k: v.clone() for k, v in state.items()}
    C = state["cls_token"].shape[-1]
    for k, v in state.items():
        if k.startswith("blocks.") and (
            k.endswith(
                (
                    "attn.qkv.weight",
                    "attn.qkv.bias",
                    "attn.proj.weight",
                    "attn.proj.bias",
                    "mlp.fc2.weight",
                    "mlp.fc2.bias",
                )
            )
        ):
            v.zero_()
    for c in range(3):
        state["blocks.0.attn.qkv.weight"][2 * C + c, c] = 1.0  # v = the LN'd colour features
        state["blocks.0.attn.proj.weight"][c, c] = 1.0
    w = state["patch_embed.proj.weight"]  # (C, 3, p, p)
    w.zero_()
    for c in range(3):
        w[c, c] = 1.0 / (w.shape[-1] * w.shape[-2])
    state["patch_embed.proj.bias"].zero_()
    state["pos_embed"].zero_()
    state["cls_token"].zero_()
    state["head.weight"] = torch.zeros(classes, C)
    state["head.weight"][:, :3] = torch.eye(classes, 3)
    state["head.bias"] = torch.zeros(classes)
    return state


@pytest.fixture(scope="module")
def right_state():
    return colour_classifier(GTPViT(PRESETS["deit_tiny"].replace(num_classes=3)).state_dict())


def test_a_model_built_to_be_right_scores_100_percent_with_every_method(tmp_path, right_state):
    root = image_folder(tmp_path / "val")
    net = GTPViT(PRESETS["deit_tiny"].replace(num_classes=3)).eval()
    net.load_state_dict(right_state)
    backbone = backbone_of(net)
    settings = settings_for(["baseline", "gtp", "prune", "tome"], Setting("gtp", num_prop=8))
    models = {s.label: reduced_model(net, backbone, s, paper_settings("deit_tiny")) for s in settings}
    out = evaluate(models, root, batch_size=5)
    assert set(out["results"]) == {"baseline", "gtp P=8 alpha=0.1 mixed M=4", "prune P=8", "tome r=8"}
    for name, r in out["results"].items():
        assert (r["images"], r["top1"], r["top5"]) == (12, 100.0, 100.0), name
    assert out["skipped"] == [] and out["classes"] == 3
    scanned = evaluate({"baseline": models["baseline"]}, ImageFolder.scan(root), batch_size=5)  # scanned once
    assert scanned["results"]["baseline"]["top1"] == 100.0 and scanned["images"] == 12


def test_a_shuffled_head_scores_0_percent_and_random_labels_near_chance(tmp_path, right_state):
    net = GTPViT(PRESETS["deit_tiny"].replace(num_classes=3)).eval()
    shuffled = dict(right_state, **{"head.weight": right_state["head.weight"][[1, 2, 0]]})
    net.load_state_dict(shuffled)
    r = evaluate({"shuffled": net}, image_folder(tmp_path / "val"))["results"]["shuffled"]
    assert (r["top1"], r["top5"]) == (0.0, 100.0)  # top-5 of 3 classes is every class
    net.load_state_dict(right_state)
    labels = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(1)).tolist()
    r = evaluate({"right": net}, image_folder(tmp_path / "random", per_class=30, labels=labels))["results"][
        "right"
    ]
    assert r["images"] == 90 and 15 <= r["top1"] <= 52  # chance 33 %, +-3 sigma


def test_models_share_the_weights(right_state):
    net = GTPViT(PRESETS["deit_tiny"].replace(num_classes=3)).eval()
    net.load_state_dict(right_state)
    backbone = backbone_of(net)
    for s in settings_for(["gtp", "tome"], Setting("gtp", num_prop=4)):
        model = reduced_model(net, backbone, s, GTPSettings())
        assert model.blocks[3].mlp.fc1.weight.data_ptr() == net.blocks[3].mlp.fc1.weight.data_ptr()
        assert not any(p.is_meta for p in model.parameters())


def test_sweeps_cover_every_value():
    base = Setting("gtp", num_prop=8, alpha=0.1, num_neighbours=4)
    P = settings_for(["baseline", "gtp", "prune", "tome"], base, "num_prop", [4, 8])
    assert [s.label for s in P] == [
        "baseline",
        "gtp P=4 alpha=0.1 mixed M=4",
        "gtp P=8 alpha=0.1 mixed M=4",
        "prune P=4",
        "prune P=8",
        "tome r=4",
        "tome r=8",
    ]
    alpha = settings_for(["baseline", "gtp"], base, "alpha", [0, 0.3])
    assert [(s.method, s.alpha) for s in alpha] == [("baseline", 0.1), ("gtp", 0.0), ("gtp", 0.3)]
    M = settings_for(["gtp"], base, "num_neighbours", [1, 8], graphs=["semantic", "mixed"])
    assert [(s.graph, s.num_neighbours) for s in M] == [
        ("semantic", 1),
        ("semantic", 8),
        ("mixed", 1),
        ("mixed", 8),
    ]


def test_limit_draws_from_every_class(tmp_path):
    folder = ImageFolder.scan(image_folder(tmp_path / "val", per_class=20))
    chosen = folder.subset(15)
    assert len(chosen) == 15 and {label for _, label in chosen} == {0, 1, 2}
    assert chosen == folder.subset(15), "a fixed draw"


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gtp_ref.apps.eval", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_command_reports_skips_unreadable_images_and_writes_json_and_figure(tmp_path, right_state):
    root = image_folder(tmp_path / "val", per_class=3)
    (root / "c1" / "broken.jpg").write_bytes(b"not an image")
    ckpt = tmp_path / "right.pth"
    torch.save(right_state, ckpt)
    out, fig = tmp_path / "sweep.json", tmp_path / "sweep.png"
    r = run(
        root,
        "--preset",
        "deit_tiny",
        "--num-classes",
        3,
        "--state-dict",
        ckpt,
        "--sweep",
        "num-prop",
        "--values",
        4,
        8,
        "--methods",
        "baseline",
        "gtp",
        "tome",
        "--json-out",
        out,
        "--figure",
        fig,
    )
    assert r.returncode == 0, r.stderr
    skipped = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0], r.stderr
    assert "1 image(s) could not be read" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["images"] == 10 and len(doc["skipped"]) == 1
    assert [(x["method"], x["num_prop"], x["top1"]) for x in doc["rows"]] == [
        ("baseline", 0, 100.0),
        ("gtp", 4, 100.0),
        ("gtp", 8, 100.0),
        ("tome", 4, 100.0),
        ("tome", 8, 100.0),
    ]
    assert all(x["images"] == 9 for x in doc["rows"])
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_pillow_refuses_are_skipped_and_every_other_result_is_kept(tmp_path, right_state):
    """A decompression bomb (error or warning), a damaged stream, a file that is no image: each is
    skipped, named and counted; the good images' results are printed and written."""
    from tests.imagefiles import bad_images

    root = image_folder(tmp_path / "val", per_class=2)
    bad = bad_images(root / "c2")
    ckpt, out = tmp_path / "right.pth", tmp_path / "out.json"
    torch.save(right_state, ckpt)
    r = run(
        root,
        "--preset",
        "deit_tiny",
        "--num-classes",
        3,
        "--state-dict",
        ckpt,
        "--methods",
        "baseline",
        "gtp",
        "--json-out",
        out,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert sorted(Path(p).name for p, _ in doc["skipped"]) == sorted(bad) and doc["images"] == 6 + len(bad)
    assert [(x["method"], x["images"], x["top1"]) for x in doc["rows"]] == [
        ("baseline", 6, 100.0),
        ("gtp", 6, 100.0),
    ]
    assert f"{len(bad)} image(s) could not be read" in r.stdout
    assert all(any(name in line for line in r.stderr.splitlines() if "skipped" in line) for name in bad), (
        r.stderr
    )


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--preset", "deit_tiny"], "'{root}': no such folder"),
        ("file", ["--preset", "deit_tiny"], "is a file; give the folder that holds one folder per class"),
        ("flat", ["--preset", "deit_tiny"], "holds no class folders"),
        ("empty", ["--preset", "deit_tiny"], "its 2 class folders hold no images"),
        ("ok", ["--preset", "deit_tiny"], "the model has 1000 classes, '{root}' has 3 class folders"),
        ("ok", ["--preset", "deit_tiny", "--checkpoint", "x.pth"], "--checkpoint goes with --timm"),
        ("ok", ["--preset", "deit_tiny", "--state-dict", "/no/such.pth"], "'/no/such.pth': no such file"),
        ("ok", ["--preset", "deit_tiny", "--sweep", "num-prop"], "--sweep and --values go together"),
        (
            "ok",
            ["--preset", "deit_tiny", "--sweep", "num-neighbours", "--values", "2.5"],
            "whole numbers >= 0",
        ),
        ("ok", ["--preset", "deit_tiny", "--figure", "x.png"], "--figure draws a sweep"),
        ("ok", ["--preset", "deit_tiny", "--limit", "0"], "--limit 0: must be >= 1"),
        ("ok", ["--preset", "deit_tiny", "--num-classes", "3", "--num-prop", "100"], "num_prop=100"),
        (
            "ok",
            ["--preset", "deit_tiny", "--json-out", "rows.txt"],
            "--json-out 'rows.txt': must end in .json",
        ),
        (
            "ok",
            ["--preset", "deit_tiny", "--sweep", "alpha", "--values", "0.1", "nan"],
            "--values nan: must be a finite",
        ),
        (
            "ok",
            ["--preset", "deit_tiny", "--sweep", "num-prop", "--values", "inf"],
            "--values inf: must be a finite",
        ),
        ("ok", ["--preset", "deit_tiny", "--alpha", "nan"], "--alpha nan: must be a finite"),
        ("ok", ["--preset", "deit_tiny", "--sparsity", "inf"], "--sparsity inf: must be a finite"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_settings_are_one_line(tmp_path, setup, args, message):
    root = tmp_path / "val"
    if setup == "file":
        root.write_text("x")
    elif setup == "flat":
        root.mkdir()
        (root / "a.png").write_bytes(b"")
    elif setup == "empty":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    elif setup == "ok":
        image_folder(root, per_class=1)
    r = command(eval_command.main, root, *args, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message.format(root=root) in r.stderr, r.stderr


def test_an_empty_class_folder_is_a_warning_and_the_run_goes_on(tmp_path, right_state):
    root = image_folder(tmp_path / "val", per_class=1, colours=COLOURS)
    (root / "c3").mkdir()
    net = GTPViT(PRESETS["deit_tiny"].replace(num_classes=4)).eval()
    net.load_state_dict(colour_classifier(net.state_dict(), classes=4))
    out = evaluate({"m": net}, root)
    assert out["empty_classes"] == ["c3"] and out["results"]["m"]["top1"] == 100.0


def test_read_state_dict_refuses_what_is_not_one(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "wrapped.pth")
    assert list(read_state_dict(tmp_path / "wrapped.pth")) == ["w"]
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a state_dict torch can read safely"):
        read_state_dict(tmp_path / "junk.pth")


def test_evaluate_refuses_models_that_do_not_fit(tmp_path):
    root = image_folder(tmp_path / "val", per_class=1)
    with pytest.raises(ValueError, match="models: give at least one"):
        evaluate({}, root)
    model = GTPViT(
        ViTConfig.of(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=1, num_heads=2)
    ).eval()
    with pytest.raises(ValueError, match="the model has 5 classes"):
        evaluate({"m": model}, root)
