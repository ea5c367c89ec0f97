"""The fast backend's CUDA attention: a GTP block's attention in a few Triton kernels that
recompute the attention map tile by tile instead of storing it (``attention``; docs/performance.md,
"The CUDA path", has the cost model it was chosen by).

For each image and head the map is softmax(q k^T + log s) over N x N entries; its threshold tau is
the kth smallest of those entries, and the output is (the map with entries below tau zeroed) v
with that map's column sums, diagonal and first row.  One program handles ROWS rows of one
image's head (a row tile) against the keys in tiles of KEYS, recomputing q k^T on the tensor cores
in every pass:

1. ``_stats_kernel``: each row's maximum, then its sum of exp(z - max) -- the softmax's two
   statistics, in the reference's order -- stored; in the same sweep it stores a sample of the
   unnormalised entries (those with (row + key) % stride == 0: about SAMPLE per head).
2. ``_bracket_kernel`` (one program per image and head): a bracket [lo, hi] around the sample's
   quantile k / N^2, a few standard errors wide, rounded out to the edges of 16-bit bins of the
   floats' bits (two digits of a radix selection over the sample, read in chunks).
3. ``_collect_kernel``: every entry below lo counted; every entry inside [lo, hi] collected into
   the head's buffer (room for max(CAP, N^2 / 8) entries).
4. ``_select_kernel`` (per image and head): where the count below lo is < k <= that count plus the
   collected ones (and the buffer held them all), tau is the (k - below)-th smallest collected, by
   radix selection over the buffer: exact.  Otherwise the head is marked for the fallback.
5. ``_fallback_kernel`` (one program per image and head; a head that 4. settled returns at once):
   the exact kth smallest by radix selection -- per 8-bit digit of the float's bits a 256-bin
   histogram of the recomputed entries whose higher digits match.  Needed where ties or an
   unlucky sample defeat the bracket.
6. ``_output_kernel``: the masked map (entries < tau set to 0), Att v, the column sums (per row
   tile, summed afterwards), the diagonal and the first row.

Every pass computes an entry by the same arithmetic, so the threshold is one of the entries the
output pass sees, bit for bit.  The arithmetic follows the reference's rounding steps: under
autocast the product is rounded to q's dtype (as autocast's matmul rounds its output), then log s
added and the softmax taken in float32 (float64 for float64 inputs).  ``TRITON_INTERPRET=1``
(set before this module is imported) runs the kernels on CPU tensors: how the test suite checks
them without a GPU.
"""

import math

import torch
import triton  # noqa: F401  (without Triton this module is not importable: gtp_ref.backends.fast checks so)

from gtp_ref.backends.fast.cuda_kernels import INTERPRETED as INTERPRETED  # whether the interpreter runs them
from gtp_ref.backends.fast.cuda_kernels import (
    _bracket_kernel,
    _collect_kernel,
    _fallback_kernel,
    _output_kernel,
    _select_kernel,
    _stats_kernel,
)

ROWS, KEYS = 32, 32  # a program's rows, and the keys per step of its sweeps
SAMPLE = 8192  # about this many sampled entries per head (all of a smaller map)
CAP = 4096  # the buffer holds max(CAP, N^2 / 8) entries inside the bracket per head (all of a smaller map)
CHUNK = 1024  # the per-head kernels read their sample and buffer in chunks of this many entries
SPREAD = 5.0  # the bracket's half-width in standard errors of the sample's quantile
MAX_TOKENS = 1024  # beyond it the explicit path (the sample and buffer sizes are for maps up to this)
# the head dimension padded to one of these: every variant is checked (bench resources)
HEAD_BLOCKS = (64, 128)
MAX_HEAD_DIM = HEAD_BLOCKS[-1]

# The warps each tile kernel is launched with, by dtype and head block (up to 64 wide, wider): the
# fewest with which both Triton 3.6 and 3.8 compile it for sm_90 without spilling.  A float32 /
# float64 product runs on the FMA units, whose tiles take more registers per thread than the tensor
# cores' half-precision ones.  ``python -m gtp_ref.apps.bench resources`` checks every entry.
WARPS = {
    "half": {
        "_stats_kernel": (4, 4),
        "_collect_kernel": (4, 4),
        "_fallback_kernel": (4, 4),
        "_output_kernel": (8, 8),
    },
    "fp32": {
        "_stats_kernel": (8, 8),
        "_collect_kernel": (8, 16),
        "_fallback_kernel": (32, 32),
        "_output_kernel": (8, 16),
    },
    "fp64": {
        "_stats_kernel": (8, 8),
        "_collect_kernel": (8, 8),
        "_fallback_kernel": (8, 8),
        "_output_kernel": (8, 8),
    },
}
HEAD_WARPS = 8  # the per-head kernels (bracket, select), which read chunks of CHUNK entries


def warps(kernel: str, dtype: torch.dtype, block_d: int = 64) -> int:
    """The warps ``kernel`` is launched with for q of ``dtype`` and a head block of ``block_d``."""
    if kernel in ("_bracket_kernel", "_select_kernel"):
        return HEAD_WARPS
    kind = "fp64" if dtype == torch.float64 else "fp32" if dtype == torch.float32 else "half"
    return WARPS[kind][kernel][block_d > 64]


def head_block(d: int) -> int:
    """The block a head of width d is padded to (d <= MAX_HEAD_DIM)."""
    return next(b for b in HEAD_BLOCKS if d <= b)


def sizes(N: int) -> tuple[int, int, int]:
    """(stride, slots per row, buffer size) of the bracket for an N x N map: one entry in
    ``stride`` sampled (about SAMPLE per head), and room for max(CAP, N^2 / 8) collected entries --
    a few times the bracket's expected share of the map (docs/performance.md)."""
    stride = max(1, math.ceil(N * N / SAMPLE))
    return stride, -(-N // stride), min(N * N, max(CAP, N * N // 8))


class _Launch:
    """What every kernel of one call shares: the grid, the strides, the flags."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, log_s: torch.Tensor | None) -> None:
        B, H, N, d = q.shape
        if N > MAX_TOKENS or d > MAX_HEAD_DIM:
            raise ValueError(
                f"the CUDA path takes N <= {MAX_TOKENS} tokens and heads up to {MAX_HEAD_DIM} wide, "
                f"got N={N}, d={d}"
            )
        if q.stride(-1) != 1 or k.stride(-1) != 1:
            raise ValueError("the CUDA path needs q, k, v with a unit stride along the head dimension")
        self.B, self.H, self.N, self.d = B, H, N, d
        self.f64 = q.dtype == torch.float64
        self.acc = torch.float64 if self.f64 else torch.float32
        self.tiles = -(-N // ROWS)
        self.grid = (B * H, self.tiles)
        self.stats = torch.empty(B * H, 2, N, dtype=self.acc, device=q.device)
        self.log_s = log_s.to(self.acc).contiguous() if log_s is not None else self.stats
        self.flags = dict(
            HAS_LOG_S=log_s is not None,
            ROUND_TO=q.dtype not in (torch.float32, torch.float64),
            F64=self.f64,
            ROWS=ROWS,
            KEYS=KEYS,
            BLOCK_D=head_block(d),
        )
        self.qs, self.ks = (q.stride(0), q.stride(1), q.stride(2)), (k.stride(0), k.stride(1), k.stride(2))
        self.dtype = q.dtype

    def warps(self, kernel: str) -> int:
        return warps(kernel, self.dtype, self.flags["BLOCK_D"])

    def new(self, *shape: int, dtype: torch.dtype | None = None, fill: float | None = None) -> torch.Tensor:
        out = torch.empty(*shape, dtype=dtype or self.acc, device=self.stats.device)
        return out if fill is None else out.fill_(fill)


def threshold(
    q: torch.Tensor, k: torch.Tensor, log_s: torch.Tensor | None, kth: int, _launch: "_Launch | None" = None
) -> tuple[torch.Tensor, torch.Tensor, "_Launch"]:
    """Each head's threshold, the kth smallest of its N^2 entries (1 <= kth <= N^2): (tau [B * H],
    settled [B * H] int32 -- 1 where the bracket found it, 0 where the radix selection did -- and
    the launch state, which holds the row statistics it was found with)."""
    L = _launch or _Launch(q, k, log_s)
    stride, row_slots, cap = sizes(L.N)
    BH = L.B * L.H
    sample = L.new(BH, L.N * row_slots)
    _stats_kernel[L.grid](
        q,
        k,
        L.log_s,
        L.stats,
        sample,
        L.N,
        L.H,
        L.d,
        *L.qs,
        *L.ks,
        stride,
        row_slots,
        SAMPLED=True,
        num_warps=L.warps("_stats_kernel"),
        **L.flags,
    )
    bounds = L.new(BH, 2)
    _bracket_kernel[(BH,)](
        L.stats,
        sample,
        bounds,
        L.N,
        kth,
        stride,
        row_slots,
        SPREAD,
        F64=L.f64,
        CHUNK=CHUNK,
        num_warps=L.warps("_bracket_kernel"),
    )
    counts = L.new(BH, 2, dtype=torch.int32, fill=0)
    buffer = L.new(BH, cap)
    _collect_kernel[L.grid](
        q,
        k,
        L.log_s,
        L.stats,
        bounds,
        counts,
        buffer,
        L.N,
        L.H,
        L.d,
        *L.qs,
        *L.ks,
        cap,
        num_warps=L.warps("_collect_kernel"),
        **L.flags,
    )
    tau, settled = L.new(BH), L.new(BH, dtype=torch.int32)
    _select_kernel[(BH,)](
        counts, buffer, tau, settled, kth, cap, F64=L.f64, CHUNK=CHUNK, num_warps=L.warps("_select_kernel")
    )
    _fallback_kernel[(BH,)](
        q,
        k,
        L.log_s,
        L.stats,
        tau,
        settled,
        L.N,
        L.H,
        L.d,
        kth,
        *L.qs,
        *L.ks,
        num_warps=L.warps("_fallback_kernel"),
        **L.flags,
    )
    return tau, settled, L


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_s: torch.Tensor | None = None, kth: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A GTP block's attention, its map never in memory.

    q (already scaled), k, v [B, H, N, d] (float32 / float64, or float16 / bfloat16 under autocast;
    views of the qkv projection are fine: unit stride along d), log_s [B, N] or None, kth =
    int(N^2 (1 - theta)) (0: no sparsity), N <= MAX_TOKENS -> (Att v [B, N, H, d] in v's dtype
    with each head's entries below its kth smallest zeroed; that masked map's column sums,
    diagonal and first row [B, H, N], float32 -- float64 for float64 inputs).
    """
    if v.stride(-1) != 1:
        raise ValueError("the CUDA path needs q, k, v with a unit stride along the head dimension")
    L = _Launch(q, k, log_s)
    B, H, N, d = L.B, L.H, L.N, L.d
    if kth:
        tau, _, _ = threshold(q, k, log_s, kth, L)
    else:  # no threshold: the row statistics alone
        _stats_kernel[L.grid](
            q,
            k,
            L.log_s,
            L.stats,
            L.stats,
            N,
            H,
            d,
            *L.qs,
            *L.ks,
            1,
            1,
            SAMPLED=False,
            num_warps=L.warps("_stats_kernel"),
            **L.flags,
        )
        tau = L.stats  # not read
    out = torch.empty(B, N, H, d, dtype=v.dtype, device=v.device)
    col_parts, diag, first_row = L.new(B * H, L.tiles, N), L.new(B * H, N), L.new(B * H, N, fill=0)
    _output_kernel[L.grid](
        q,
        k,
        v,
        L.log_s,
        L.stats,
        tau,
        out,
        col_parts,
        diag,
        first_row,
        N,
        H,
        d,
        *L.qs,
        *L.ks,
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(2),
        out.stride(1),
        L.tiles,
        HAS_TAU=kth > 0,
        num_warps=L.warps("_output_kernel"),
        **L.flags,
    )
    return out, col_parts.sum(1).view(B, H, N), diag.view(B, H, N), first_row.view(B, H, N)


@torch.library.custom_op("gtp_ref::cuda_attention", mutates_args=())
def attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_s: torch.Tensor | None, kth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``attention`` as one torch custom op: ``torch.compile`` keeps it whole in its graph (it
    neither traces into the Triton launches nor into Triton's interpreter), and CUDA graphs capture
    its launches.  Inference only: it has no gradient."""
    return attention(q, k, v, log_s, kth)


@attention_op.register_fake
def _(q, k, v, log_s, kth):
    B, H, N, d = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (v.new_empty(B, N, H, d), *(q.new_empty(B, H, N, dtype=acc) for _ in range(3)))
