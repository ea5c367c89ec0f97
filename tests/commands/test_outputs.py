"""Every command checks its output paths before any work: a path it cannot write is one line and
exit 2 before anything is computed (a survey, a measurement, an evaluation), not a traceback after
it; a write that fails afterwards anyway (a full disk) is one line that says what was kept."""

import errno
import os
import pathlib
from pathlib import Path

import pytest

from complexity import plot as complexity_plot
from gtp_ref.apps import digits, support, vis
from gtp_ref.apps import eval as eval_command
from gtp_ref.apps.bench import __main__ as bench
from gtp_ref.conformance import __main__ as conformance
from tests.helpers import command
from tests.imagefiles import image_folder


@pytest.fixture
def unwritable(tmp_path):
    """A folder in which no file can be made, for this user: a folder without write permission,
    or (root ignores permissions) /proc, which takes no new files."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
    elif Path("/proc/self").is_dir():
        yield Path("/proc")
    else:
        pytest.skip("needs a folder this user cannot write to (root: /proc)")


def image(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    return tmp_path / "image.png"


# (command, its main, arguments before the output option, the option; {tmp}: a scratch folder)
COMMANDS = [
    ("support", support.main, ["--modules", "deit"], "--json-out", "rows.json"),
    (
        "bench throughput",
        bench.main,
        ["throughput", "--models", "smoke", "--repeats", "1"],
        "--json-out",
        "t.json",
    ),
    (
        "bench throughput figure",
        bench.main,
        ["throughput", "--models", "smoke", "--repeats", "1"],
        "--figure",
        "t.png",
    ),
    ("bench scaling", bench.main, ["scaling", "--grids", "8", "--repeats", "1"], "--json-out", "s.json"),
    (
        "eval",
        eval_command.main,
        ["{folder}", "--preset", "deit_tiny", "--num-classes", "3"],
        "--json-out",
        "e.json",
    ),
    ("vis", vis.main, ["{image}", "--preset", "deit_tiny"], "--out", "v.png"),
    ("digits", digits.main, ["--epochs", "1", "--seeds", "0"], "--json-out", "d.json"),
    ("digits figures", digits.main, ["--epochs", "1", "--seeds", "0"], "--figures", "figs"),
    ("digits models", digits.main, ["--epochs", "1", "--seeds", "0"], "--models-dir", "models"),
    ("complexity.plot", complexity_plot.main, [], "--out", "figures"),
    ("conformance export", conformance.main, ["export"], None, "vectors"),
]


@pytest.mark.parametrize("name, main, args, option, target", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_an_unwritable_output_is_refused_before_any_work(
    tmp_path, unwritable, name, main, args, option, target
):
    fill = {
        "{folder}": str(image_folder(tmp_path / "val", per_class=1, size=16)) if "{folder}" in args else "",
        "{image}": str(image(tmp_path)) if "{image}" in args else "",
    }
    args = [fill.get(a, a) for a in args] + ([option] if option else []) + [str(unwritable / target)]
    r = command(main, *args)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-1000:])
    assert "no file can be written in" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == "", "nothing computed, nothing printed"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_survey_says_what_was_kept_when_the_write_fails_afterwards(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    r = command(support.main, "--modules", "deit", "--json-out", tmp_path / "rows.json")
    assert r.returncode == 1 and "converts" in r.stdout, r.stdout[-500:]
    assert "the rows were not saved" in r.stderr and "the table above is all that was kept" in r.stderr, (
        r.stderr
    )
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_evaluation_says_what_was_kept_when_the_write_fails_afterwards(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "val", per_class=1, size=16)
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    r = command(
        eval_command.main,
        root,
        "--preset",
        "deit_tiny",
        "--num-classes",
        "3",
        "--methods",
        "baseline",
        "--json-out",
        tmp_path / "e.json",
    )
    assert r.returncode == 2 and "baseline" in r.stdout, r.stdout[-500:]
    last = r.stderr.strip().splitlines()[-1]  # after the progress lines
    assert "No space left on device" in last and last.endswith("the table above is all that was kept"), (
        r.stderr
    )


def test_a_benchmark_whose_saves_fail_measures_on_and_says_so_once(tmp_path, monkeypatch):
    """bench throughput saves the rows after every group; where that fails it says so once, measures
    on, prints the table, and ends with the one line of the final write (exit 1)."""
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    r = command(
        bench.main,
        "throughput",
        "--models",
        "smoke",
        "--repeats",
        "1",
        "--methods",
        "baseline_fused",
        "gtp_fast",
        "--json-out",
        tmp_path / "t.json",
    )
    assert r.returncode == 1 and "gtp_fast" in r.stdout, (r.stdout[-500:], r.stderr[-1500:])
    assert r.stderr.count("cannot save the rows so far") == 1, r.stderr
    assert (
        r.stderr.strip().splitlines()[-1].endswith("No space left on device")
        and "the measurement above was not saved" in r.stderr
    ), r.stderr
