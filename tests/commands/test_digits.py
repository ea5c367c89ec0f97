"""``python -m gtp_ref.apps.digits``, shortened (one seed, six epochs): it trains, saves and reuses its
checkpoints, sweeps every experiment, and writes the JSON and the figures."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits experiment needs scikit-learn (the digits extra)")

from gtp_ref.apps import digits  # noqa: E402
from tests.helpers import command  # noqa: E402


def test_data_is_the_fixed_split_of_the_packaged_digits():
    x, y, xt, yt = digits.load()
    assert x.shape == (1347, 1, 16, 16) and xt.shape == (450, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and set(y.tolist()) == set(range(10))
    assert torch.equal(digits.load()[3], yt), "the split is fixed"
    total = torch.bincount(torch.cat([y, yt]))
    assert ((torch.bincount(yt) - total / 4).abs() <= 1).all(), "stratified: a quarter of every digit"


def test_shift_moves_each_image_by_at_most_one_pixel():
    x = torch.zeros(50, 1, 16, 16) - 1
    x[:, :, 8, 8] = 1  # one bright pixel
    moved = digits.shift(x, torch.Generator().manual_seed(0))
    where = (moved[:, 0] == 1).nonzero()[:, 1:]
    assert len(where) == 50 and ((where - 8).abs() <= 1).all() and len({tuple(w.tolist()) for w in where}) > 3


def test_command_trains_reuses_and_writes(tmp_path):
    args = [
        sys.executable,
        "-m",
        "gtp_ref.apps.digits",
        "--seeds",
        "0",
        "--epochs",
        "6",
        "--models-dir",
        str(tmp_path / "models"),
        "--json-out",
        str(tmp_path / "r.json"),
        "--figures",
        str(tmp_path / "figs"),
    ]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "digits_avg_seed0_e6.pth",
        "digits_cls_seed0_e6.pth",
    ]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["seeds"] == [0] and doc["test_images"] == 450
    assert all(row["mean"] > 20 for row in doc["unreduced"] if row["sparsity"] == 1), (
        "six epochs beat chance (10 %)"
    )
    assert {(r["head"], r["sparsity"]) for r in doc["unreduced"]} == {
        (h, t) for h in ("cls", "avg") for t in digits.SPARSITIES
    }
    assert len(doc["alpha"]) == len(digits.ALPHAS) * len(digits.ALPHA_P) * len(digits.SPARSITIES)
    assert len(doc["neighbours"]) == 2 * len(digits.NEIGHBOURS) * len(digits.NEIGHBOUR_P)
    assert {(x["head"], x["method"], x.get("sparsity")) for x in doc["methods"]} == {
        (h, m, t)
        for h in ("cls", "avg")
        for m, t in [("tome", None), *[(m, t) for m in ("gtp", "prune") for t in digits.SPARSITIES]]
    }
    for row in doc["alpha"] + doc["methods"]:
        assert len(row["acc"]) == 1 and row["mean"] == row["acc"][0]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        f"digits_{n}.{e}" for n in ("alpha", "neighbours", "methods") for e in ("png", "pdf")
    )
    # avg: no alpha, M sweeps
    again = subprocess.run(args + ["--heads", "avg"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("reusing") == 1, again.stderr
    redo = json.loads((tmp_path / "r.json").read_text())
    assert redo["alpha"] == redo["neighbours"] == []
    assert redo["methods"] == [r for r in doc["methods"] if r["head"] == "avg"], "the same numbers"


def test_pruning_is_gtp_without_propagation():
    """alpha = 0 drops the selected tokens: the same as propagation="none"."""
    state = digits.build("cls").state_dict()
    x = digits.load()[2][:20]
    pruned = digits.reduced(state, "cls", "prune", 8)
    none = digits.build("cls", **{**digits.GTP, "propagation": "none"}, num_prop=8)
    none.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(pruned(x), none.eval()(x), atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs 0: must be >= 1"),
        (["--seeds", "1", "1"], "each seed once"),
        (["--json-out", "r.txt"], "must end in .json"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, message):
    r = command(digits.main, *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
