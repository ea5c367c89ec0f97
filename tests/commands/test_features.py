"""``python -m gtp_ref.apps.features``, at smoke sizes: the fidelity table of every method on the
digits model and a photograph geometry, its JSON and its figure, and its refusals."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("sklearn", reason="the digits and the sample photographs come with scikit-learn")

from gtp_ref.apps import features  # noqa: E402
from tests.helpers import command  # noqa: E402


def test_the_photographs_are_normalised_square_crops():
    x = features.photographs(64, 3)
    assert x.shape == (6, 3, 64, 64) and -2.2 < x.min() < x.max() < 2.7
    assert (x[0] - x[2]).abs().mean() > 0.1, "the crops differ"


def test_the_fidelity_table_json_and_figure(tmp_path):
    out, fig = tmp_path / "f.json", tmp_path / "f.png"
    r = subprocess.run(
        [sys.executable, "-m", "gtp_ref.apps.features", "--models", "digits", "deit_small",
         "--epochs", "1", "--models-dir", tmp_path / "m", "--img-size", "64", "--crops", "1",
         "--num-prop", "1", "--rounds", "1", "--json-out", out, "--figure", fig],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["model"], row["method"]) for row in rows] == [
        (m, method) for m in ("digits", "deit_small") for method in features.METHODS
    ]
    for row in rows:
        assert (
            all(-1 - 1e-6 <= row[k] <= 1 + 1e-6 for k in ("cos_p10", "cos_mean")) and row["dense_ms"] > 0
        ), row
        assert f"| {row['model']} | 1 | {row['method']} | {row['tokens_left']} |" in r.stdout
    assert fig.stat().st_size > 10_000 and (tmp_path / "m" / "digits_cls_seed0_e1.pth").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--models", "dinov2_small", "--img-size", "100"],
            "--img-size 100: dinov2_small needs a multiple of its patch, 14",
        ),
        (["--crops", "0"], "--crops 0: must be >= 1"),
        (["--num-prop", "0"], "--num-prop [0]: each must be >= 1"),
        (["--models", "resnet"], "invalid choice"),
        (["--figure", "f.txt"], "--figure"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(args, message, tmp_path):
    r = command(features.main, *args, "--models-dir", tmp_path / "m")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()
