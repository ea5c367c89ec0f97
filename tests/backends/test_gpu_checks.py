"""The GPU script cannot waste a GPU run: its dry run (``GPU_CHECKS_DRY_RUN=1 bash
tools/gpu_checks.sh``) runs every step's real command on the CPU at smoke sizes -- the Triton
tests and the CUDA path in Triton's interpreter among them -- and must pass, name every step with
its status line, and leave at most 8 files (what a GPU run returns)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = [
    "env",
    "tests",
    "attention",
    "deit_small_fp16",
    "deit_small_bf16",
    "deit_small_fp32",
    "deit_small_384",
    "deit_base_fp16",
    "vit_large_fp16",
    "deit_small_compile",
]


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)
def test_the_dry_run_passes_every_step(tmp_path):
    pytest.importorskip("triton", reason="the dry run runs the Triton kernels in Triton's interpreter")
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECKS_DRY_RUN": "1", "OUT": str(out)}
    r = subprocess.run(
        ["bash", "tools/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, summary[-4000:] + r.stderr[-2000:]
    for step in STEPS:
        assert re.search(rf"^== {step}: rc=0 in \d+ s$", summary, re.M), (step, summary[-3000:])
    assert "skipped" not in summary and "0 step(s) failed" in summary
    files = sorted(p.name for p in out.iterdir())
    assert files == ["results.tgz", "summary.txt", "throughput_deit_small_fp16.png"], files
    assert re.search(r"^\| +smoke +2 +fp32 +gtp_fast +2 ", summary, re.M), "rows stream into the summary"
