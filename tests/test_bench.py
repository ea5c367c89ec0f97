"""Smoke test of the benchmark command (a benchmark is not a test: no timing is asserted)."""
import json
import subprocess
import sys

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
    assert methods == {"baseline_fused", "baseline_explicit", "gtp_dense", "gtp_sparse", "tome"}
    assert {x["P"] for x in rows if x["method"] == "tome"} == {1, 2}
    assert all(x["img_per_s"] > 0 for x in rows)
    assert all(x["ideal_speedup"] > 1 for x in rows if x["P"])
    assert int.from_bytes(fig.read_bytes()[16:20], "big") >= 800


def test_throughput_refuses_too_few_repeats_for_a_measurement():
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--models", "deit_small",
                        "--repeats", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--repeats must be >= 5" in r.stderr
