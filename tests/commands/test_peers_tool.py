"""tools/peers.py: the tools that import other projects' checkouts run them in a scratch folder,
so that what such code writes into its working directory (the authors' GTP-ViT appends to a file
``missing`` on every forward) never lands in this repository."""

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def test_foreign_code_runs_in_a_scratch_folder_that_is_removed(tmp_path):
    code = (
        f"import os, sys; sys.path.insert(0, {str(TOOLS)!r}); from peers import foreign; "
        "scratch = foreign('checkout'); open('missing', 'a').write('0.0'); "
        "print(scratch, os.getcwd() == str(scratch), sys.path[0])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    scratch, inside, first = r.stdout.split()
    assert inside == "True" and first == str(tmp_path / "checkout"), r.stdout  # absolute: the folder changed
    assert not (tmp_path / "missing").exists() and not Path(scratch).exists(), (
        "written in the scratch folder, then gone"
    )
