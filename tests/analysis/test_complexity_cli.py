"""``python -m complexity`` and ``python -m complexity.plot`` as a user runs them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from complexity.report import build_report, executed_table, extra_cost_table, quoted_table, tables_table

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def test_report_prints_tables_erratum_and_quoted_values():
    r = run("complexity")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert extra_cost_table(build_report()) in out
    assert "C*L*M**2*(5*L + 2)/24" in out
    assert re.search(r"DeiT-S\s+ToMe\s+28\.3 .*N=196, Eq\. 2 printed", out)
    assert re.search(r"DeiT-B\s+GTP\s+40\.5 .*N=197, Eq\. 3 sum", out)
    for v in ("20.26", "27.88", "28.64", "55.77"):
        assert v in out


def test_json_report_is_machine_readable():
    r = run("complexity", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    deit_s = data["extra_cost"][0]
    assert deit_s["backbone"] == "DeiT-S"
    assert deit_s["gtp_sum"]["exact"] == "20258952"
    assert {q["backbone"] for q in data["quoted"]} == {"DeiT-S", "DeiT-B"}
    assert len(data["tables"]) == 9  # DeiT-S P=8,11,14,16; DeiT-B P=4,8,11,14,16 (the columns of Tables 1-2)


def test_custom_backbone():
    r = run("complexity", "--N", "577", "--L", "24", "--C", "1024", "--H", "16", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["extra_cost"]
    assert [x["N"] for x in row] == [577]
    from complexity import g_gtp

    assert row[0]["gtp_sum"]["exact"] == str(g_gtp(577, 24, 8, 1024, 16))


@pytest.mark.parametrize(
    "args, word",
    [
        (["--num-prop", "-1"], "M must be an integer >= 0, got -1"),
        (["--N", "50"], "tokens"),
        (["--N", "x"], "--N"),
        (["--C", "0"], "C"),
        (["--bogus"], "bogus"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, word):
    r = run("complexity", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], r.stderr


@pytest.mark.parametrize(
    "name, table",
    [
        ("report-table", extra_cost_table),
        ("quoted-table", quoted_table),
        ("tables-table", tables_table),
        ("executed-table", executed_table),
    ],
)
def test_doc_tables_match_the_code(name, table):
    doc = (ROOT / "docs" / "complexity.md").read_text()
    block = re.search(rf"<!-- {name}:begin -->\n```\n(.*?)```\n<!-- {name}:end -->", doc, re.S)
    assert block, f"docs/complexity.md lost its {name} markers"
    assert block.group(1).rstrip("\n") == table(build_report()), f"regenerate the {name} in the doc"


def test_plot_writes_png_and_pdf(tmp_path):
    r = run("complexity.plot", "--out", str(tmp_path / "figs"))
    assert r.returncode == 0, r.stderr
    for name in ("figure3", "uncounted"):
        png, pdf = tmp_path / "figs" / f"{name}.png", tmp_path / "figs" / f"{name}.pdf"
        width = int.from_bytes(png.read_bytes()[16:20], "big")  # PNG IHDR width
        assert width >= 800
        assert pdf.read_bytes().startswith(b"%PDF")


def test_plot_bad_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("complexity.plot", "--out", str(blocker))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_plot_says_which_files_it_replaced(tmp_path):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "figure3.png").write_bytes(b"old")
    r = run("complexity.plot", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"replaced {out / 'figure3.png'}" in r.stdout and f"wrote {out / 'figure3.pdf'}" in r.stdout


@pytest.mark.parametrize("case", ["empty", "symlink"])
def test_plot_never_writes_through_a_symlink_nor_into_an_empty_path(tmp_path, case):
    out, outside = tmp_path / "figs", tmp_path / "outside.png"
    out.mkdir()
    outside.write_bytes(b"keep me")
    (out / "uncounted.png").symlink_to(outside)
    r = run("complexity.plot", "--out", "" if case == "empty" else str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("give a directory" if case == "empty" else "is a symbolic link") in r.stderr
    assert outside.read_bytes() == b"keep me" and not (out / "figure3.png").exists(), "nothing is written"
