"""The style every change keeps: ruff's formatter and linter with the project's configuration
(``[tool.ruff]`` in pyproject.toml: lines of at most 110 characters, sorted imports, no unused
names).  ``ruff format`` and ``ruff check --fix`` mend what they report."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return [found]


def test_the_code_is_formatted():
    r = subprocess.run(
        [*ruff(), "format", "--check", "--diff", "."], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_the_code_passes_the_linter():
    r = subprocess.run(
        [*ruff(), "check", "--output-format", "concise", "."], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
