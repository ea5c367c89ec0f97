"""``python -m gtp_ref.apps.bench threshold``: GTP's sparsity threshold alone, by every exact method.

The threshold is the k-th smallest of each head's N^2 attention entries, k = int(N^2 (1 - theta))
(theta = 0.6), on softmax maps [B, H, N, N] with H = 6.  Every method's result is compared with
``torch.kthvalue``'s (exact: bit-equal); times are interleaved rounds (``common.measure``).
"""

import argparse
from collections.abc import Callable
from typing import Any

import torch

from gtp_ref.apps.bench import common

HEADS, THETA = 6, 0.6


def add_arguments(sub: Any) -> None:
    th = sub.add_parser("threshold", help="the sparsity threshold: kthvalue vs topk vs the fast backend's")
    th.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    th.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="BxN",
        help="batch x tokens (default on CUDA: 16x197 256x197 1x4097; CPU: 8x197 1x577 1x1025)",
    )
    common.add_output_options(th)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    common.positive(parser, "--repeats", args.repeats)
    default = ["16x197", "256x197", "1x4097"] if args.device == "cuda" else ["8x197", "1x577", "1x1025"]
    # N >= 2: k = int(N^2 (1 - theta)) must be >= 1 for there to be a threshold at all
    args.sizes = common.parse_sizes(parser, args.sizes or default, min_tokens=2)


def methods() -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """name -> f(rows [R, L], k) -> [R]: the k-th smallest of every row."""
    from gtp_ref.backends.fast import kth_smallest

    return {
        "kthvalue": lambda x, k: x.kthvalue(k, dim=-1).values,
        "topk": lambda x, k: x.topk(k, dim=-1, largest=False, sorted=False).values.amax(-1),
        "fast.kth_smallest": kth_smallest,
    }


def run(args: argparse.Namespace) -> Any:
    from gtp_ref.select import sparsity_k

    rows = []
    g = torch.Generator(device=args.device).manual_seed(0)
    for B, N in args.sizes:
        attn = (
            torch.randn(B * HEADS, N, N, generator=g, device=args.device).softmax(-1).view(B * HEADS, N * N)
        )
        k = sparsity_k(N, THETA)
        want = attn.kthvalue(k, dim=-1).values
        fns = {name: (lambda f: lambda: f(attn, k))(f) for name, f in methods().items()}
        timings = common.measure(
            fns, args.device, args.repeats, progress=lambda m: common.progress(f"{B}x{N}: {m}")
        )
        for name, fn in fns.items():
            rows.append(
                {
                    "B": B,
                    "N": N,
                    "H": HEADS,
                    "k": k,
                    "method": name,
                    "exact": bool(torch.equal(fn(), want)),
                    **timings[name].row(1e6, "us"),
                }
            )
    return rows


def table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = [
        f"k-th smallest of each head's N^2 attention entries (theta = {THETA}, H = {HEADS})",
        common.header(env),
        "",
        f"{'B':>4} {'N':>5} {'method':>18} {'median us':>11} {'IQR us':>21} {'vs kthvalue':>11} {'exact':>6}",
    ]
    base = {(r["B"], r["N"]): r["median_us"] for r in rows if r["method"] == "kthvalue"}
    for r in rows:
        timing = common.timing_cells(r["median_us"], r["q1_us"], r["q3_us"], r["noisy"], 11, 10, 1)
        out.append(
            f"{r['B']:>4} {r['N']:>5} {r['method']:>18} {timing} "
            f"{r['median_us'] / base[(r['B'], r['N'])]:>11.3f} {str(r['exact']):>6}"
        )
    out += common.noisy_note(rows)
    return "\n".join(out) + "\n"
