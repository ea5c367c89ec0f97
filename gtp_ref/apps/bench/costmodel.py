"""``python -m gtp_ref.apps.bench costmodel``: what one GTP block's attention costs on a GPU, on paper,
for each candidate design of the fast backend's CUDA path -- bytes moved, tensor-core FLOPs,
exponentials and integer operations, each against what the machine allows.

For one block of a ViT (B images, N tokens, H heads of width d; the paper's settings: theta =
0.6, scores from the masked map's columns and diagonal), each design is a sequence of passes --
a kernel, or a sweep inside one -- and each pass is costed by its bottleneck: max(bytes /
bandwidth, FLOPs / tensor-core rate, exponentials / SFU rate, integer ops / ALU rate).  A design's
time is the sum of its passes'.  This is a model, not a measurement: it ignores latency, launch
overheads (CUDA-graph replay hides them), caches and occupancy, and it counts what each design
must do at the least.  It exists to choose what to build; a GPU run decides what stays
(``bash tools/gpu_checks.sh``).

Machine (``--machine``): the defaults are an H200 as the device notes give it (4.3 TB/s HBM,
790 TFLOP/s dense fp16 / bf16 tensor cores, 132 SMs at 1.83 GHz with 16 exponentials and 64
integer operations per SM and clock).
"""

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

MACHINES = {
    "h200": dict(bandwidth=4.3e12, tensor=790e12, sms=132, clock=1.83e9, sfu=16, alu=64),
    "h100": dict(bandwidth=3.35e12, tensor=790e12, sms=132, clock=1.83e9, sfu=16, alu=64),
}


@dataclass
class Pass:
    """One pass over memory or over the map: what it moves and computes."""

    name: str
    bytes: float = 0.0
    flops: float = 0.0  # tensor-core FLOPs (2 per multiply-add)
    exps: float = 0.0
    int_ops: float = 0.0
    tiled: bool = False  # products on 32-row tiles (mma.sync): at m["tile_rate"] of the tensor cores' peak

    def parts(self, m: dict[str, float]) -> dict[str, float]:
        tensor = m["tensor"] * (m.get("tile_rate", 1.0) if self.tiled else 1.0)
        return {
            "memory": self.bytes / m["bandwidth"],
            "tensor": self.flops / tensor,
            "exp": self.exps / (m["sms"] * m["clock"] * m["sfu"]),
            "int": self.int_ops / (m["sms"] * m["clock"] * m["alu"]),
        }

    def seconds(self, m: dict[str, float]) -> float:
        return max(self.parts(m).values())

    def bound(self, m: dict[str, float]) -> str:
        parts = self.parts(m)
        return max(parts, key=parts.get)


@dataclass
class Design:
    name: str
    what: str
    passes: list[Pass] = field(default_factory=list)

    def total(self, key: str) -> float:
        return sum(getattr(p, key) for p in self.passes)

    def seconds(self, m: dict[str, float]) -> float:
        return sum(p.seconds(m) for p in self.passes)


def histogram_ops(bins: int) -> float:
    """Integer operations per element of ``tl.histogram`` as Triton lowers it (a ballot per bit of
    the bin index and a population count per bin, shared by a warp's 32 lanes)."""
    return bins / 32 + math.log2(bins)


def pad(n: int, tile: int) -> int:
    return -(-n // tile) * tile


def designs(B: int, N: int, H: int, d: int, elem: int = 2) -> list[Design]:
    """The candidate designs for one block; ``elem``: bytes of q, k, v (2 under fp16 / bf16 autocast)."""
    C = H * d
    E = B * H * N * N  # map entries
    qkv, out = 3 * B * N * C * elem, B * N * C * elem
    dot = 2 * B * H * N * N * d  # one q k^T (or one Att v) over the whole map
    sdpa = Design(
        "sdpa",
        "the unreduced model's fused attention (no GTP): q, k, v read once, no map in memory",
        [Pass("flash attention", qkv + out, 2 * dot, E)],
    )

    explicit = Design(
        "explicit",
        "the dense reference's ops under autocast: the fp32 map in memory, "
        "kthvalue-like selection, masking, scores, Att v (7 passes over the map)",
        [
            Pass("q kT (fp16 logits)", 2 * B * N * C * elem + 2 * E, dot),
            Pass("+ log s (fp32)", 2 * E + 4 * E),
            Pass("softmax (fp32)", 8 * E, 0, E),
            Pass("threshold (topk, 2 reads)", 8 * E),
            Pass("masking", 8 * E),
            Pass("column sums", 4 * E),
            Pass("cast + Att v", 4 * E + 2 * E + 2 * E + B * N * C * elem + out, dot),
        ],
    )
    two = Design(
        "two_kernel",
        "the earlier path above 256 tokens (removed): cuBLAS logits, a softmax kernel writing the fp32 "
        "map, topk, one mask-cast-reduce kernel, cuBLAS Att v",
        [
            Pass("q kT (fp16 logits)", 2 * B * N * C * elem + 2 * E, dot),
            Pass("softmax kernel (fp32 map)", 2 * E + 4 * E, 0, E),
            Pass("threshold (topk, 2 reads)", 8 * E),
            Pass("mask + cast + column sums", 4 * E + 2 * E),
            Pass("Att v", 2 * E + B * N * C * elem + out, dot),
        ],
    )
    # the earlier one_kernel: a program per image and head, 32-row tiles against all keys padded to a
    # power of two; the map recomputed for the row statistics, three 11-bit radix passes, the output
    Ep = B * H * pad(N, 32) * 2 ** math.ceil(math.log2(N))
    recompute = 2 * Ep * d / (N * N) * N * N  # q kT over the padded tiles
    one = Design(
        "one_kernel",
        "the earlier path up to 256 tokens (removed): one program per image and head, the map recomputed "
        "5x over 32 x 256 tiles, three 11-bit histogram passes",
        [
            Pass("row statistics", qkv, recompute, Ep),
            *[
                Pass(f"radix pass {i} (2048 bins)", 0, recompute, Ep, Ep * histogram_ops(2048))
                for i in (1, 2, 3)
            ],
            Pass("mask, Att v, reductions", out, 2 * recompute, Ep),
        ],
    )
    Et = B * H * pad(N, 32) ** 2  # 32 x 32 tiles
    tile_dot = 2 * Et * d
    radix8 = Design(
        "radix8",
        "recompute in 32 x 32 tiles, programs per row tile, row statistics stored once, four "
        "8-bit histogram passes",
        [
            Pass("row statistics", qkv, tile_dot, Et),
            *[
                Pass(f"radix pass {i} (256 bins)", 0, tile_dot, Et, Et * histogram_ops(256))
                for i in (1, 2, 3, 4)
            ],
            Pass("mask, Att v, reductions", out, 2 * tile_dot, Et),
        ],
    )
    # the bracket design as built (gtp_ref.backends.fast.cuda): about 8192 sampled entries per head;
    # the bracket from three 256-bin histograms of the sample (the first digit once, the second for
    # each bound), the k-th of the collected entries from four (one per 8-bit digit)
    sample = min(8192, N * N)
    q = 0.4  # the quantile of theta = 0.6
    share = min(1.0, 2 * 5 * math.sqrt(q * (1 - q) / sample) + 2**-6)  # +-5 standard errors, 16-bit bins
    inside = share * E  # entries collected
    bracket = Design(
        "bracket",
        "the CUDA path as built: recompute in 32 x 32 tiles: the row statistics in two sweeps (max, then "
        "the sum, "
        "storing a sample), a per-head bracket around the k-th value from the sample, one sweep that "
        "counts below and collects inside it, the k-th of the collected, the output; exact radix "
        "selection only where the bracket misses",
        [
            Pass("row maxima", qkv, tile_dot, 0),
            Pass("row sums + sample", 4 * B * H * sample, tile_dot, Et),
            Pass("bracket (per head)", 3 * 4 * B * H * sample, 0, 0, 3 * B * H * sample * histogram_ops(256)),
            Pass("count below, collect inside", 4 * inside, tile_dot, Et, 4 * Et),
            Pass("k-th of the collected (per head)", 4 * 4 * inside, 0, 0, 4 * inside * histogram_ops(256)),
            Pass("mask, Att v, reductions", out, 2 * tile_dot, Et),
        ],
    )
    for design in (one, radix8, bracket):  # their products run on 32-row tiles
        for p in design.passes:
            p.tiled = p.flops > 0
    return [sdpa, explicit, two, one, radix8, bracket]


def machine(name: str, tile_rate: float = 1.0) -> dict[str, float]:
    """The machine ``name``, with the tile kernels' products at ``tile_rate`` of its tensor-core peak."""
    return {**MACHINES[name], "tile_rate": tile_rate}


def table(B: int, N: int, H: int, d: int, m: dict[str, float], name: str) -> str:
    rows = designs(B, N, H, d)
    base = rows[0].seconds(m)
    tiles = "" if m["tile_rate"] == 1 else f", 32-row tiles at {m['tile_rate']:g} of that"
    out = [
        f"one block's attention on paper: B = {B}, N = {N}, H = {H}, d = {d}, fp16; {name}: "
        f"{m['bandwidth'] / 1e12:.1f} TB/s, {m['tensor'] / 1e12:.0f} TFLOP/s{tiles}, {m['sms']} SMs x "
        f"{m['clock'] / 1e9:.2f} GHz ({m['sfu']} exp, {m['alu']} int per SM and clock)",
        "",
        f"{'design':>11} {'MB moved':>9} {'tensor GFLOP':>12} {'exp (M)':>8} {'int (G)':>8} {'us':>8} "
        f"{'vs sdpa':>7}  bottlenecks",
    ]
    for r in rows:
        s = r.seconds(m)
        bounds = ", ".join(sorted({p.bound(m) for p in r.passes}))
        out.append(
            f"{r.name:>11} {r.total('bytes') / 1e6:>9.0f} {r.total('flops') / 1e9:>12.1f} "
            f"{r.total('exps') / 1e6:>8.0f} {r.total('int_ops') / 1e9:>8.2f} {s * 1e6:>8.1f} "
            f"{s / base:>7.2f}  {bounds}"
        )
    return "\n".join(out) + "\n"


def forward_seconds(
    B: int,
    N: int,
    H: int,
    d: int,
    depth: int,
    P: int,
    attention: str,
    m: dict[str, float],
    mlp_ratio: float = 4.0,
) -> float:
    """One forward of the blocks on paper: per block the GEMMs (qkv and projection on N_l tokens,
    the MLP on N_l - P), the attention design ``attention`` on N_l tokens, and the element-wise
    passes (two LayerNorms, two residual additions, GELU: each a read and a write of the tokens);
    GTP's selection and propagation (O(N C) per block) are left out."""
    C = H * d
    total, N_l = 0.0, N
    for _ in range(depth):
        n_mlp = N_l - P
        # noqa: E731
        gemm = lambda n, c_in, c_out: Pass(
            "gemm", 2 * (B * n * (c_in + c_out) + c_in * c_out), 2 * B * n * c_in * c_out
        )
        hidden = int(C * mlp_ratio)
        passes = [
            gemm(N_l, C, 3 * C),
            gemm(N_l, C, C),
            gemm(n_mlp, C, hidden),
            gemm(n_mlp, hidden, C),
            Pass("element-wise", 2 * 2 * B * (2 * N_l + 2 * n_mlp) * C + 2 * 2 * B * n_mlp * hidden),
        ]
        total += sum(p.seconds(m) for p in passes)
        total += next(x for x in designs(B, N_l, H, d) if x.name == attention).seconds(m)
        N_l = n_mlp
    return total


def forward_table(
    B: int, N: int, H: int, d: int, depth: int, schedule: list[int], m: dict[str, float]
) -> str:
    """Speed-ups on paper over the unreduced forward (fused attention): free pruning at P (fused
    attention, no cost of choosing), and GTP with the CUDA path's attention (``bracket``)."""
    base = forward_seconds(B, N, H, d, depth, 0, "sdpa", m)
    out = [
        f"whole forwards on paper (blocks only): B = {B}, N = {N}, {depth} blocks of C = {H * d}; speed-up "
        "over "
        f"the unreduced model",
        f"{'P':>3} {'free pruning':>12} {'GTP (bracket)':>13} {'GTP / free pruning':>18}",
    ]
    for P in schedule:
        free = base / forward_seconds(B, N, H, d, depth, P, "sdpa", m)
        gtp = base / forward_seconds(B, N, H, d, depth, P, "bracket", m)
        out.append(f"{P:>3} {free:>12.2f} {gtp:>13.2f} {gtp / free:>18.2f}")
    return "\n".join(out) + "\n"


def passes_table(B: int, N: int, H: int, d: int, m: dict[str, float]) -> str:
    """Every design's passes, each with its time and bottleneck."""
    out = []
    for design in designs(B, N, H, d):
        out.append(f"{design.name}: {design.what}")
        out += [f"    {p.name:>40} {p.seconds(m) * 1e6:8.1f} us  {p.bound(m)}" for p in design.passes]
    return "\n".join(out) + "\n"


def add_arguments(sub: Any) -> None:
    cm = sub.add_parser(
        "costmodel", help="one GTP block's attention on paper: bytes, FLOPs, exponentials, int ops per design"
    )
    cm.add_argument(
        "--sizes",
        nargs="+",
        default=["256x197", "64x577"],
        metavar="BxN",
        help="batch x tokens (default 256x197 64x577: DeiT-S at 224 and 384 px)",
    )
    cm.add_argument("--heads", type=int, default=6)
    cm.add_argument("--head-dim", type=int, default=64)
    cm.add_argument("--machine", choices=list(MACHINES), default="h200")
    cm.add_argument(
        "--tile-rate",
        type=float,
        default=1.0,
        metavar="F",
        help="the share of the tensor cores' peak that products on 32-row tiles reach (default 1; "
        "Triton runs them with mma.sync, not Hopper's wgmma)",
    )
    cm.add_argument("--passes", action="store_true", help="also every pass of every design")
    cm.add_argument(
        "--forward",
        type=int,
        nargs="+",
        metavar="P",
        default=None,
        help="also whole forwards at these P (tokens removed per block): free pruning and GTP",
    )
    cm.add_argument("--depth", type=int, default=12, help="blocks, for --forward (default 12)")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from gtp_ref.apps.bench import common

    args.sizes = common.parse_sizes(parser, args.sizes, min_tokens=2)
    common.positive(parser, "--heads", args.heads)
    common.positive(parser, "--head-dim", args.head_dim)
    if not 0 < args.tile_rate <= 1:
        parser.error(f"--tile-rate {args.tile_rate}: must be in (0, 1]")


def run(args: argparse.Namespace) -> int:
    m = machine(args.machine, args.tile_rate)
    for B, N in args.sizes:
        print(table(B, N, args.heads, args.head_dim, m, args.machine))
        if args.passes:
            print(passes_table(B, N, args.heads, args.head_dim, m))
        if args.forward:
            print(forward_table(B, N, args.heads, args.head_dim, args.depth, args.forward, m))
    return 0
