"""``python -m gtp_ref.apps.bench scaling``: the dense reference against the sparse backend as the grid grows.

Workload: the token graph (mixed, M = 8) plus 12 layers of selection (random scores) and graph
propagation (alpha = 0.1, token sizes on) removing P = n/64 tokens per layer; B = 2, C = 64.
Per grid and backend: the time (interleaved rounds, see ``common.measure``) and the most memory
the work holds at once beyond its inputs -- on CUDA ``torch.cuda.max_memory_allocated``, on the
CPU the allocation timeline of ``torch.profiler`` (every tensor allocation and free; an op's
scratch space freed before the op returns is not seen).
"""

import argparse
from collections.abc import Callable
from typing import Any

import torch

from gtp_ref.apps.bench import common
from gtp_ref.backends import get_backend

LAYERS, BATCH, CHANNELS, NEIGHBOURS, ALPHA = 12, 2, 64, 8, 0.1
BACKENDS = ("dense", "sparse")
MIN_SIDE = 8  # P = n / 64 must be >= 1


def add_arguments(sub: Any) -> None:
    s = sub.add_parser("scaling", help="dense vs sparse: token graph + 12 propagation layers, by grid size")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument(
        "--grids",
        type=int,
        nargs="+",
        default=[14, 32, 64],
        metavar="SIDE",
        help=f"grid sides (default 14 32 64; each >= {MIN_SIDE})",
    )
    common.add_output_options(s)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    common.positive(parser, "--repeats", args.repeats)
    for side in args.grids:
        if side < MIN_SIDE:
            parser.error(
                f"--grids {side}: each side must be >= {MIN_SIDE} (P = n/64 tokens per layer must be >= 1)"
            )


def workload(backend: str, side: int, device: str, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A closure running token_graph + LAYERS x (select + propagate) on fixed inputs."""
    ops = get_backend(backend)
    g = torch.Generator(device=device).manual_seed(seed)
    n, P = side * side, side * side // 64
    x0 = torch.randn(BATCH, 1 + n, CHANNELS, generator=g, device=device)  # [CLS] + grid
    scores = [torch.rand(BATCH, n - l * P, generator=g, device=device) for l in range(LAYERS)]

    def run():
        x, s = x0, torch.ones(BATCH, 1 + n, device=device)
        G = ops.token_graph(x[:, 1:], (side, side), "mixed", NEIGHBOURS)
        for l in range(LAYERS):
            kept, prop = ops.select_tokens(scores[l], P)
            x, G, s = ops.propagate(x, G, kept, prop, ALPHA, s)
        return x

    return run


def peak_added_bytes(run: Callable[[], Any], device: str) -> int:
    """The largest amount of memory ``run()`` holds at once beyond what existed before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes = sorted(
        (e.time_range.start, e.self_cpu_memory_usage if e.name != "[memory]" else e.cpu_memory_usage)
        for e in prof.events()
        if e.name == "[memory]" or not e.cpu_children
    )
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


def run(args: argparse.Namespace) -> Any:
    rows = []
    for side in args.grids:
        fns = {backend: workload(backend, side, args.device) for backend in BACKENDS}
        timings = common.measure(
            fns,
            args.device,
            args.repeats,
            min_block_s=0.02,
            progress=lambda m: common.progress(f"{side}x{side}: {m}"),
        )
        for backend in BACKENDS:
            rows.append(
                {
                    "grid": f"{side}x{side}",
                    "n": side * side,
                    "backend": backend,
                    **timings[backend].row(1e3, "ms"),
                    "peak_mb": peak_added_bytes(fns[backend], args.device) / 2**20,
                }
            )
        dense, sparse = rows[-2], rows[-1]
        sparse["time_ratio"] = sparse["median_ms"] / dense["median_ms"]
        sparse["mem_ratio"] = sparse["peak_mb"] / max(dense["peak_mb"], 1e-9)
    return rows


def table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = [
        f"token_graph + {LAYERS} x (select + graph propagation), B={BATCH}, C={CHANNELS}, mixed graph "
        f"M={NEIGHBOURS}, P=n/64, token sizes on",
        common.header(env),
        "",
        f"{'grid':>6} {'n':>5} {'backend':>7} {'median ms':>10} {'IQR ms':>17} {'peak MB':>9} "
        f"{'time s/d':>9} {'mem s/d':>8}",
    ]
    for r in rows:
        ratios = f"{r['time_ratio']:>9.3f} {r['mem_ratio']:>8.4f}" if "time_ratio" in r else ""
        timing = common.timing_cells(r["median_ms"], r["q1_ms"], r["q3_ms"], r["noisy"], 10, 8, 2)
        out.append(f"{r['grid']:>6} {r['n']:>5} {r['backend']:>7} {timing} {r['peak_mb']:>9.2f} {ratios}")
    out += common.noisy_note(rows)
    return "\n".join(out) + "\n"
