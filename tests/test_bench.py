"""Smoke test of the benchmark command (a benchmark is not a test: no timing is asserted)."""
import json
import shutil
import subprocess
import sys

import pytest

from gtp_ref.bench import peak_added_bytes


def test_scaling_smoke():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "scaling", "--grids", "4", "8",
                        "--repeats", "1", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["grid"], x["backend"]) for x in rows] == [
        ("4x4", "dense"), ("4x4", "sparse"), ("8x8", "dense"), ("8x8", "sparse")]
    assert all(x["median_ms"] > 0 and x["peak_mb"] >= 0 for x in rows)
    assert "time_ratio" in rows[1] and "mem_ratio" in rows[3]


def test_peak_memory_counts_a_known_allocation():
    import torch

    def run():
        a = torch.empty(1 << 20, dtype=torch.float64)  # 8 MiB
        b = torch.empty(1 << 19, dtype=torch.float64)  # 4 MiB, while a is alive
        del a, b

    assert peak_added_bytes(run, "cpu") == 12 * 2**20


def test_bad_arguments_exit_2():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "scaling", "--repeats", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--repeats" in r.stderr


def test_throughput_smoke(tmp_path):
    fig = tmp_path / "tp.png"
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--models", "smoke",
                        "--repeats", "1", "--json", "--figure", str(fig)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    methods = {x["method"] for x in rows}
    assert methods == {"baseline_fused", "baseline_explicit", "gtp_dense", "gtp_sparse", "gtp_fast", "tome"}
    assert {x["P"] for x in rows if x["method"] == "tome"} == {1, 2}
    assert all(x["img_per_s"] > 0 for x in rows)
    assert all(x["ideal_speedup"] > 1 for x in rows if x["P"])
    assert int.from_bytes(fig.read_bytes()[16:20], "big") >= 800


def test_throughput_refuses_too_few_repeats_for_a_measurement():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--models", "deit_small",
                        "--repeats", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--repeats must be >= 5" in r.stderr


def test_graph_methods_need_cuda():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--methods", "gtp_fast+graph",
                        "--repeats", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "need --device cuda" in r.stderr


def test_threshold_smoke():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "threshold", "--sizes", "2x9", "--repeats", "1",
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {x["method"] for x in rows} == {"kthvalue", "topk", "topk (fast)"} and all(x["exact"] for x in rows)
    bad = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "threshold", "--sizes", "2by9"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--sizes are BxN" in bad.stderr


def test_profile_smoke():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "profile", "--rows", "5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "smoke gtp_fast P=1" in r.stdout and "Name" in r.stdout


def test_plot_redraws_from_json_out(tmp_path):
    rows = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--methods", "baseline_fused", "gtp_fast",
                        "--repeats", "1", "--json-out", str(rows)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {x["method"] for x in json.loads(rows.read_text())["rows"]} == {"baseline_fused", "gtp_fast"}
    fig = tmp_path / "again.png"
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "plot", str(rows), "--figure", str(fig)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"wrote {fig}" in r.stdout, r.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "plot", str(tmp_path / "missing.json"),
                        "--figure", str(fig)], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read throughput rows" in r.stderr


@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_throughput_compile_smoke():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--models", "smoke", "--repeats", "1",
                        "--methods", "gtp_fast", "gtp_fast+compile", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["P"]) for x in rows] == [("gtp_fast", 1), ("gtp_fast", 2),
                                                     ("gtp_fast+compile", 1), ("gtp_fast+compile", 2)]
    assert all(x["img_per_s"] > 0 for x in rows)


def test_attention_map_smoke():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "attention", "--sizes", "2x9", "3x10", "--repeats", "1",
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["B"], x["method"]) for x in rows] == [(B, m) for B in (2, 3) for m in
                                                     ("torch", "q kT (torch)", "q kT, keys padded to 8")]
    assert all(x["median_us"] > 0 and x["dtype"] == "float32" for x in rows)
    assert [x["max_abs_diff"] for x in rows if x["method"] == "torch"] == [0.0, 0.0]
    bad = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "attention", "--sizes", "0x9"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--sizes are BxN" in bad.stderr
