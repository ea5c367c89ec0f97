"""``python -m gtp_ref.apps.bench attention``: one block's attention alone, GTP's against the plain one.

A DeiT-S block (C = 384, H = 6, random weights) on random tokens with token sizes, at the paper's
settings (``gtp_ref.presets.paper_settings``: theta = 0.6, ``mixed_attn_max``; a [CLS] token) or
another ``--sparsity`` (theta = 1: GTP's scores without a threshold).  Each method maps x [B, N, C]
to the block's attention output (and GTP's to the token scores too):

    sdpa         the unreduced model's: ``scaled_dot_product_attention``, no map, no scores
    explicit     GTP with the dense reference's ops: the map, ``dense.sparsify_attention``
                 (``torch.kthvalue``, ``masked_fill``), Att v, ``dense.token_scores``
    cpu          the fast backend on the CPU (``fast.PATHS["cpu"]``: its compiled kernels)
    cuda         the fast backend on CUDA (``fast.PATHS["cuda"]``: its Triton kernels, N <= 1024)

The kernel methods run where the fast backend's kernels do (CUDA with Triton); on the CPU
``sdpa``, ``explicit`` and ``cpu``.  Every GTP method's output and scores are compared with ``explicit``'s
(largest absolute difference); times are interleaved rounds (``common.measure``).
"""

import argparse
from collections.abc import Callable
from typing import Any

import torch

from gtp_ref.apps import AUTOCAST
from gtp_ref.apps.bench import common
from gtp_ref.presets import paper_settings

DIM, HEADS = 384, 6
PAPER = paper_settings("deit_small")


def add_arguments(sub: Any) -> None:
    at = sub.add_parser(
        "attention", help="one block's attention: fused (no GTP) vs GTP's explicit and kernel paths"
    )
    at.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    at.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="BxN",
        help="batch x tokens (default on CUDA: 256x197 64x577; CPU: 8x197)",
    )
    at.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(AUTOCAST),
        help="default: fp16 and fp32 on CUDA, fp32 on the CPU (fp16 / bf16: autocast)",
    )
    at.add_argument(
        "--sparsity",
        type=float,
        default=PAPER.sparsity,
        metavar="THETA",
        help=f"GTP's attention sparsity theta in (0, 1] (default the paper's {PAPER.sparsity})",
    )
    common.add_output_options(at)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    common.positive(parser, "--repeats", args.repeats)
    if not 0 < args.sparsity <= 1:
        parser.error(f"--sparsity {args.sparsity}: must be in (0, 1]")
    cuda = args.device == "cuda"
    args.sizes = common.parse_sizes(
        parser, args.sizes or (["256x197", "64x577"] if cuda else ["8x197"]), min_tokens=2
    )
    args.dtypes = args.dtypes or (["fp16", "fp32"] if cuda else ["fp32"])
    if not cuda and set(args.dtypes) != {"fp32"}:
        parser.error("--dtypes: fp16 / bf16 autocast is measured on CUDA; the CPU runs fp32")


def methods(device: str, N: int) -> list[str]:
    """The methods that run on ``device`` at N tokens."""
    from gtp_ref.backends import fast

    names = ["sdpa", "explicit"]
    if device == "cpu" and fast.TRITON_DEVICE != "cpu" and fast.cpu.available():
        names.append("cpu")
    if fast.TRITON_DEVICE == device and N <= fast.cuda.MAX_TOKENS:
        names.append("cuda")
    return names


def attention(
    block: Any,
    method: str,
    x: torch.Tensor,
    sizes: torch.Tensor,
    amp: torch.dtype | None,
    theta: float = PAPER.sparsity,
) -> Callable[[], tuple[torch.Tensor, torch.Tensor | None]]:
    """The callable timed for ``method``: () -> (out [B, N, C], scores [B, n] or None)."""
    from gtp_ref.backends import dense, fast
    from gtp_ref.select import column_scores

    selection = PAPER.selection

    def explicit():
        q, k, v = block.attn.heads(block.norm1(x))
        attn = dense.sparsify_attention(block.attn.map(q, k, sizes), theta)
        return block.attn.out(block.attn.mix(attn, v)), dense.token_scores(attn, selection, True)

    def path(name):
        def run():
            q, k, v = block.attn.heads(block.norm1(x))
            out, col_sums, diagonal, _ = fast.PATHS[name](q * block.attn.scale, k, v, sizes, theta)
            return block.attn.out(out), column_scores(col_sums[..., 1:], diagonal[..., 1:], selection)

        return run

    run = {
        "sdpa": lambda: (block.attn(block.norm1(x), sizes, fused_attn=True)[0], None),
        "explicit": explicit,
        "cpu": path("cpu"),
        "cuda": path("cuda"),
    }[method]

    def call():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            return run()

    return call


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from gtp_ref.config import ViTConfig
    from gtp_ref.vit import Block

    rows = []
    for dtype in args.dtypes:
        for B, N in args.sizes:
            g = torch.Generator().manual_seed(0)
            with torch.device(args.device):
                block = Block(ViTConfig.of(embed_dim=DIM, num_heads=HEADS, depth=1), block=0).eval()
            x = torch.randn(B, N, DIM, generator=g).to(args.device)
            sizes = (1 + torch.rand(B, N, generator=g) * 3).to(args.device)
            fns = {
                m: attention(block, m, x, sizes, AUTOCAST[dtype], args.sparsity)
                for m in methods(args.device, N)
            }
            want_out, want_scores = fns["explicit"]()
            timings = common.measure(
                fns, args.device, args.repeats, progress=lambda m: common.progress(f"{dtype} {B}x{N}: {m}")
            )
            for name, fn in fns.items():
                out, scores = fn()
                diff = None if name == "sdpa" else (out.float() - want_out.float()).abs().max().item()
                sdiff = None if scores is None else (scores.float() - want_scores.float()).abs().max().item()
                rows.append(
                    {
                        "B": B,
                        "N": N,
                        "H": HEADS,
                        "dtype": dtype,
                        "sparsity": args.sparsity,
                        "method": name,
                        "max_abs_diff_out": diff,
                        "max_abs_diff_scores": sdiff,
                        **timings[name].row(1e6, "us"),
                    }
                )
    return rows


def table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    theta = rows[0].get("sparsity", PAPER.sparsity) if rows else PAPER.sparsity
    out = [
        f"one DeiT-S block's attention (C = {DIM}, H = {HEADS}), token sizes on; GTP: theta = {theta}, "
        f"{PAPER.selection}",
        common.header(env),
        "",
        f"{'dtype':>5} {'B':>4} {'N':>5} {'method':>11} {'median us':>11} {'IQR us':>21} {'vs sdpa':>8} "
        f"{'|out - explicit|':>17} {'|scores - expl.|':>17}",
    ]
    base = {(r["dtype"], r["B"], r["N"]): r["median_us"] for r in rows if r["method"] == "sdpa"}

    def fmt(v):
        return f"{'-':>17}" if v is None else f"{v:>17.2e}"

    for r in rows:
        timing = common.timing_cells(r["median_us"], r["q1_us"], r["q3_us"], r["noisy"], 11, 10, 1)
        out.append(
            f"{r['dtype']:>5} {r['B']:>4} {r['N']:>5} {r['method']:>11} {timing} "
            f"{r['median_us'] / base[(r['dtype'], r['B'], r['N'])]:>8.2f} "
            f"{fmt(r['max_abs_diff_out'])} {fmt(r['max_abs_diff_scores'])}"
        )
    out += common.noisy_note(rows)
    return "\n".join(out) + "\n"
