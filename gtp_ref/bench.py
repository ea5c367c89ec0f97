"""Benchmarks.  ``python -m gtp_ref.bench scaling [--device cpu|cuda] [--json]``.

scaling: the token graph plus 12 layers of selection and graph propagation (random scores,
P = n/64 per layer, token sizes on, B = 2, C = 64, mixed graph with M = 8) for grids
14x14, 32x32 and 64x64, on both backends: wall time (median of repeats, with min and max)
and the peak memory the work adds on top of its inputs.  Ratios sparse / dense are measured in
the same run.  Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the
allocation timeline of ``torch.profiler`` (profile_memory=True; it sees every tensor
allocation and free, but not an op's internal scratch space freed before the op returns).
"""
import argparse
import importlib
import json
import statistics
import sys
import time

import torch

GRIDS = (14, 32, 64)
LAYERS, BATCH, CHANNELS, NEIGHBOURS, ALPHA = 12, 2, 64, 8, 0.1


def scaling_workload(backend, side, device, seed=0):
    """Inputs and a closure running token_graph + LAYERS x (select + propagate)."""
    ops = importlib.import_module(f"gtp_ref.{backend}")
    g = torch.Generator(device=device).manual_seed(seed)
    n = side * side
    x0 = torch.randn(BATCH, 1 + n, CHANNELS, generator=g, device=device)  # [CLS] + grid
    scores = [torch.rand(BATCH, n - l * (n // 64), generator=g, device=device) for l in range(LAYERS)]
    P = n // 64

    def run():
        x, s = x0, torch.ones(BATCH, 1 + n, device=device)
        G = ops.token_graph(x[:, 1:], (side, side), "mixed", NEIGHBOURS)
        for l in range(LAYERS):
            kept, prop = ops.select_tokens(scores[l], P)
            x, G, s = ops.propagate(x, G, kept, prop, ALPHA, s)
        return x

    return run


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_it(run, device, repeats, warmup=2):
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_added_bytes(run, device):
    """Largest amount of memory the call holds at once beyond what existed before it."""
    if device == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage if e.name != "[memory]"
                      else e.cpu_memory_usage) for e in prof.events()
                     if e.name == "[memory]" or not e.cpu_children)
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


def scaling(device="cpu", repeats=7, grids=GRIDS, progress=None):
    rows = []
    for side in grids:
        for backend in ("dense", "sparse"):
            if progress:
                progress(f"{side}x{side} {backend} ...")
            run = scaling_workload(backend, side, device)
            times = time_it(run, device, repeats)
            rows.append({"grid": f"{side}x{side}", "n": side * side, "backend": backend,
                         "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                         "max_ms": 1e3 * max(times), "peak_mb": peak_added_bytes(run, device) / 2**20})
    for dense, sparse in zip(rows[::2], rows[1::2]):
        sparse["time_ratio"] = sparse["median_ms"] / dense["median_ms"]
        sparse["mem_ratio"] = sparse["peak_mb"] / max(dense["peak_mb"], 1e-9)
    return rows


TARGETS = [("64x64", "mem_ratio", 0.10), ("64x64", "time_ratio", 0.25), ("14x14", "time_ratio", 1.5)]


def format_scaling(rows, device):
    out = [f"token_graph + {LAYERS} x (select + graph propagation), B={BATCH}, C={CHANNELS}, mixed graph "
           f"M={NEIGHBOURS}, P=n/64, token sizes on; device={device}, torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads", "",
           f"{'grid':>6} {'n':>5} {'backend':>7} {'median ms':>10} {'min-max ms':>17} {'peak MB':>9} "
           f"{'time s/d':>9} {'mem s/d':>8}"]
    for r in rows:
        ratios = (f"{r['time_ratio']:>9.3f} {r['mem_ratio']:>8.4f}" if "time_ratio" in r else "")
        out.append(f"{r['grid']:>6} {r['n']:>5} {r['backend']:>7} {r['median_ms']:>10.2f} "
                   f"{r['min_ms']:>8.2f}-{r['max_ms']:<8.2f} {r['peak_mb']:>9.2f} {ratios}")
    out.append("")
    by = {(r["grid"], r["backend"]): r for r in rows}
    for grid, key, limit in TARGETS:
        if (grid, "sparse") in by:
            v = by[(grid, "sparse")][key]
            out.append(f"target {grid} {key} <= {limit}: {v:.4f} {'met' if v <= limit else 'MISSED'}")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gtp_ref.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scaling", help="dense vs sparse: token graph + 12 propagation layers")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--grids", type=int, nargs="+", default=list(GRIDS), help="grid sides (default 14 32 64)")
    s.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.repeats < 1 or any(g < 1 for g in args.grids):
        p.error("--repeats and --grids must be >= 1")
    rows = scaling(args.device, args.repeats, tuple(args.grids),
                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({"device": args.device, "torch": torch.__version__, "rows": rows}, indent=2))
    else:
        print(format_scaling(rows, args.device), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
