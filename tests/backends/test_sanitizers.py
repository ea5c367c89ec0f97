"""The compiled CPU kernels under AddressSanitizer and UBSan: built with the sanitizers and driven
through every entry point by hypothesis (tests/backends/sanitized_kernels.py) with valid and malformed
shapes, indices and values, so that an out-of-bounds access or undefined behaviour that a change
brings back is a failing test, not a silent wrong number.  Skipped, with the reason, where the
compiler has no sanitizers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gtp_ref.backends.fast import cpu_build

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 150  # per entry point: about 30 s in all on two cores


def runtime(cc: str, name: str) -> str | None:
    """The path of the compiler's runtime library ``name`` (libasan.so, libstdc++.so), or None."""
    try:
        found = subprocess.run(
            [cc, f"-print-file-name={name}"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """(the kernels built with -fsanitize=address,undefined, the environment to run them in)."""
    try:
        cc = cpu_build._compiler()
    except OSError as e:
        pytest.skip(str(e))
    asan, stdcxx = runtime(cc, "libasan.so"), runtime(cc, "libstdc++.so")
    if asan is None or stdcxx is None:
        pytest.skip(f"{cc} has no AddressSanitizer runtime (libasan.so) or no libstdc++.so beside it")
    out = tmp_path_factory.mktemp("sanitized") / "cpu_kernels_sanitized.so"
    flags = [
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fopenmp",
        "-shared",
        "-fPIC",
        str(cpu_build.SOURCE),
        "-o",
        str(out),
    ]
    for extra in (["-march=native"], []):  # the vector paths of this CPU where the compiler takes them
        r = subprocess.run([cc, *extra, *flags], capture_output=True, text=True)
        if r.returncode == 0:
            break
    else:
        pytest.skip(f"{cc} cannot build with the sanitizers: {r.stderr.strip()[:300]}")
    # the ASan runtime first; libstdc++ beside it so that ASan finds the C++ runtime's throw (torch's
    # exceptions pass through its interceptor)
    env = {
        **os.environ,
        "LD_PRELOAD": f"{asan} {stdcxx}",
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONPATH": str(ROOT),
    }
    return out, env


def child(sanitized, *args, cwd):
    library, env = sanitized
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "backends" / "sanitized_kernels.py"), str(library), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_the_sanitizer_is_awake(sanitized, tmp_path):
    """A deliberate over-read through ctypes (past every Python check) is reported and stops the
    process: the run below can find what it looks for."""
    r = child(sanitized, "canary", cwd=tmp_path)
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, (
        r.returncode,
        r.stdout,
        r.stderr[-2000:],
    )
    assert "the over-read went unseen" not in r.stdout


def test_every_entry_point_under_the_sanitizers(sanitized, tmp_path):
    r = child(sanitized, str(EXAMPLES), cwd=tmp_path)
    report = "\n".join(line for line in r.stderr.splitlines() if not line.lstrip().startswith("#"))[-3000:]
    assert r.returncode == 0 and "no finding" in r.stdout, (r.returncode, r.stdout[-1000:], report)
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error:" not in r.stderr, report
