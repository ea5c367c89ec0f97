"""What every benchmark command shares: the timing helper, the table header, the output.

Timing (``measure``): every candidate is warmed up, then the calls per timed block are chosen
so that a block lasts at least ``min_block_s``; then ``rounds`` rounds time one block of every
candidate in turn (interleaved, so that a slow spell of a shared machine hits all of them
alike).  A candidate's time is the median over the rounds, with the quartiles and the extremes;
its spread is flagged as noisy where the interquartile range exceeds ``NOISY`` of the median.
On the CPU a block is timed by ``torch.utils.benchmark.Timer`` (which also picks the calls per
block, ``blocked_autorange``); on CUDA by CUDA events around the block (the calls are queued
asynchronously, the events time the GPU work).
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

NOISY = 0.10  # interquartile range / median above which a timing is flagged


@dataclass
class Timing:
    """Seconds per call, one value per round."""

    seconds: list
    calls_per_round: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.seconds) < 2:
            return self.seconds[0], self.seconds[0]
        q = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY

    def row(self, per_call: float = 1.0, prefix: str = "s") -> dict[str, Any]:
        """The JSON fields of a timing (median, quartiles, extremes, spread, noisy)."""
        q1, q3 = self.quartiles
        return {
            f"median_{prefix}": self.median * per_call,
            f"q1_{prefix}": q1 * per_call,
            f"q3_{prefix}": q3 * per_call,
            f"min_{prefix}": min(self.seconds) * per_call,
            f"max_{prefix}": max(self.seconds) * per_call,
            "spread": self.spread,
            "noisy": self.noisy,
            "rounds": len(self.seconds),
            "calls_per_round": self.calls_per_round,
        }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cpu_timer(fn: Callable[[], Any]) -> Any:
    from torch.utils.benchmark import Timer

    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def _block(fn: Callable[[], Any], device: str, calls: int) -> float:
    """Seconds for ``calls`` calls of ``fn``."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return _cpu_timer(fn).timeit(calls).median * calls


def _calls_per_block(fn: Callable[[], Any], device: str, min_block_s: float) -> int:
    if device == "cuda":
        calls, t = 1, _block(fn, device, 1)
        while t < min_block_s and calls < 1 << 16:
            calls *= 2
            t = _block(fn, device, calls)
        return calls
    return _cpu_timer(fn).blocked_autorange(min_run_time=min_block_s).number_per_run


def measure(
    fns: dict[Any, Callable[[], Any]],
    device: str,
    rounds: int,
    *,
    warmup: int = 2,
    min_block_s: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> dict[Any, Timing]:
    """{name: Timing} for the callables ``fns`` ({name: fn}), timed in interleaved rounds."""
    calls = {}
    for name, fn in fns.items():
        if progress:
            progress(f"warm-up {name}")
        for _ in range(warmup):
            fn()
        _sync(device)
        calls[name] = _calls_per_block(fn, device, min_block_s)
    seconds = {name: [] for name in fns}
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1} of {rounds}")
        for name, fn in fns.items():
            _sync(device)
            seconds[name].append(_block(fn, device, calls[name]) / calls[name])
    return {name: Timing(seconds[name], calls[name]) for name in fns}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """What a reader needs to compare a table: device, versions, threads, date."""
    env = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    if device == "cuda":
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def header(env: dict[str, Any]) -> str:
    extra = f", Triton {env['triton']}" if env.get("triton") else ""
    return (
        f"device={env['device']} ({env['device_name']}), torch {env['torch']}{extra}, "
        f"{env['threads']} threads, {env['date']}"
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timing_cells(
    median: float, q1: float, q3: float, noisy: bool, width: int, quartile_width: int, digits: int
) -> str:
    """A table's median and interquartile range, ``!`` after a noisy median."""
    return (
        f"{median:>{width}.{digits}f}{'!' if noisy else ' '}"
        f"{q1:>{quartile_width}.{digits}f}-{q3:<{quartile_width}.{digits}f}"
    )


def noisy_note(rows: list[dict[str, Any]], advice: str = "") -> list[str]:
    """The footnote for ``!``, where a row is noisy."""
    if not any(r["noisy"] for r in rows):
        return []
    return [f"! noisy: interquartile range above {NOISY:.0%} of the median{advice}"]


def add_output_options(
    parser: argparse.ArgumentParser, repeats_help: str = "interleaved timing rounds (default 7)"
) -> None:
    """--repeats, --json and --json-out, which every measuring command takes (see ``emit``)."""
    parser.add_argument("--repeats", type=int, default=7, help=repeats_help)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    parser.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON to PATH")


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """doc as JSON at path, written whole or not at all (a temporary file, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


_PARTIAL_FAILED: set[str] = set()  # the --json-out paths whose partial write failed (said once each)


def write_partial(path: str | Path, doc: dict[str, Any]) -> None:
    """The rows measured so far at path, marked ``"partial": true`` (a run cut short keeps them);
    a failing write is one line on stderr, once, and the measurement goes on (its rows are printed
    at the end, and the final write is tried again)."""
    try:
        write_json(path, {**doc, "partial": True})
    except OSError as e:
        if str(path) not in _PARTIAL_FAILED:
            _PARTIAL_FAILED.add(str(path))
            progress(f"warning: cannot save the rows so far to --json-out {str(path)!r} ({e}); measuring on")


def emit(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    env: dict[str, Any],
    rows: list[dict[str, Any]],
    table: str,
) -> int:
    """Print the table (or the JSON with --json), then write --json-out: a finished measurement
    is on the screen before anything can fail; a failing write is one line and exit status 1."""
    doc = {**env, "command": " ".join(["python -m gtp_ref.apps.bench", *sys.argv[1:]]), "rows": rows}
    text = json.dumps(doc, indent=2)
    print(text if args.json else table, end="\n" if args.json else "", flush=True)
    if getattr(args, "json_out", None):
        try:
            Path(args.json_out).write_text(text + "\n")
        except OSError as e:
            parser.exit(
                1,
                f"{parser.prog}: error: the measurement above was not saved: cannot write "
                f"--json-out {str(args.json_out)!r}: {e}\n",
            )
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


def parse_sizes(
    parser: argparse.ArgumentParser, values: list[str], *, min_tokens: int
) -> list[tuple[int, int]]:
    """--sizes BxN ... as (B, N) pairs; exit 2 with one line on a malformed or too small one."""
    sizes = []
    for s in values:
        try:
            B, N = (int(v) for v in s.lower().split("x"))
        except ValueError:
            parser.error(f"--sizes {s!r}: write BxN with integers, e.g. 256x197")
        if B < 1 or N < min_tokens:
            parser.error(f"--sizes {s!r}: need B >= 1 and N >= {min_tokens}")
        sizes.append((B, N))
    return sizes


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


def positive(parser: argparse.ArgumentParser, option: str, value: int | None, minimum: int = 1) -> int | None:
    if value is not None and value < minimum:
        parser.error(f"{option} {value}: must be >= {minimum}")
    return value
