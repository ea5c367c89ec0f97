"""The project's command-line plumbing: one-line usage errors, and output files written safely.

A usage error is one line on stderr and exit code 2.  Output paths are checked before any work,
so that a long run never ends in a path it cannot write: an empty path is an error, a file that
is a symbolic link is never written through (it could point anywhere outside the target
directory), and the place must take a file (tried: a file created in its folder and removed, an
existing file opened for writing without changing it).  Each file written is reported as
``wrote PATH`` or, where it existed before, ``replaced PATH``; a write that still fails
afterwards (a full disk) is one line that says what was kept.
"""

import argparse
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_path(
    parser: argparse.ArgumentParser, option: str, value: Any, *, suffixes: Sequence[str] | None = None
) -> Path | None:
    """``value`` of ``option`` as a Path, checked before any work: not empty, not a symbolic link,
    not a directory, in an existing folder, and (where given) ending in one of ``suffixes``."""
    if value is None:
        return None
    if not str(value).strip():
        parser.error(f"{option} '': give a file path")
    path = Path(value)
    if suffixes and path.suffix.lower() not in suffixes:
        parser.error(f"{option} {value!r}: must end in {' or '.join(suffixes)}")
    problem = _target_problem(path) or (
        _unwritable(path) if path.parent.is_dir() else f"its folder {str(path.parent)!r} does not exist"
    )
    if problem:
        parser.error(f"{option} {value!r}: {problem}")
    return path


def output_dir(parser: argparse.ArgumentParser, option: str, value: Any) -> Path:
    """``value`` of ``option`` as a directory Path, checked before any work: not empty, not an
    existing file, and files can be made in it (or in the nearest existing folder above it,
    where it is still to be made)."""
    if not str(value).strip():
        parser.error(f"{option} '': give a directory")
    path = Path(value)
    if path.exists() and not path.is_dir():
        parser.error(f"{option} {value!r} is a file, not a directory")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    problem = _folder_problem(existing) if existing.is_dir() else f"{str(existing)!r} is a file"
    if problem:
        parser.error(f"{option} {value!r}: {problem}")
    return path


def _folder_problem(folder: Path) -> str | None:
    """Why no file can be made in ``folder``, or None: tried with a temporary file, then removed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as e:
        return f"no file can be written in {str(folder)!r} ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, or None: a file must be creatable in its folder (where it
    is written whole, then renamed) and an existing file must open for writing (unchanged)."""
    problem = _folder_problem(path.parent)
    if problem is None and path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY))
        except OSError as e:
            problem = f"cannot be written ({e.strerror or e})"
    return problem


def _target_problem(path: Path) -> str | None:
    if path.is_symlink():
        return (
            f"is a symbolic link (to {os.readlink(path)}); not writing through it -- remove it or "
            "choose another path"
        )
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        return f"its folder {str(parent)!r} is a file"
    return None


def write_files(
    parser: argparse.ArgumentParser,
    where: str,
    paths: Sequence[str | Path],
    write: Callable[[], Sequence[str | Path]],
    kept: str | None = None,
) -> int:
    """Write ``paths`` (all known beforehand) by calling ``write()``; report each as wrote/replaced.

    Every path is checked first (``_target_problem``), so nothing is written when one is bad; an
    OSError while writing becomes the parser's one-line error naming ``where`` and, where given,
    ``kept``: what the user still has (e.g. "the table above").
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        problem = _target_problem(p)
        if problem:
            parser.error(f"cannot write {p} in {where}: {problem}")
    existed = {p for p in paths if p.exists()}
    try:
        written = [Path(p) for p in write()]
    except OSError as e:
        parser.error(f"cannot write into {where}: {e}" + (f"; {kept} is all that was kept" if kept else ""))
    assert written == paths, (written, paths)  # the list above is the one written
    for p in paths:
        print(f"{'replaced' if p in existed else 'wrote'} {p}")
    return 0
