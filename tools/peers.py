"""What the tools that run other projects' code share: that code runs in a scratch directory.

The authors' GTP-ViT appends debug output to a file ``missing`` in the current directory on every
forward pass (``models_v3.py``); other research code writes logs and caches likewise.  A tool that
imports such a checkout calls ``foreign(path)`` first: the checkout's absolute path goes on
``sys.path`` and the working directory becomes a fresh temporary folder, removed at exit, so that
nothing lands in this repository (or wherever the tool was started).
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def foreign(*checkouts: str) -> Path:
    """Put the checkouts on sys.path (absolute: the working directory changes) and move into a
    temporary working directory; returns it."""
    for path in checkouts:
        sys.path.insert(0, str(Path(path).resolve()))
    scratch = Path(tempfile.mkdtemp(prefix="gtp_ref-peers-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    os.chdir(scratch)
    return scratch
