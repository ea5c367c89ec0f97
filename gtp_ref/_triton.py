"""Triton kernels of the fast backend (``gtp_ref.fast``).  Imported only where Triton is present.

``kth_smallest(rows, k)``: the exact k-th smallest value of every row of a [R, L] tensor by
radix selection -- a few passes of a per-row histogram over the float's bits, O(L) per row,
no sort and no data-dependent shapes.  The attention-sparsity threshold of GTP is this with
one row per image and head (L = N^2), where ``torch.kthvalue`` was the slowest op of a forward.

How it works, per row: map each float to a 32-bit key whose unsigned order is the float
order (flip all bits of negatives, the sign bit of the rest); then, for the digits of the key
from the top (``DIGITS`` bits each), count the elements that match the digits fixed so far
by their next digit, and fix the digit in whose bin the k-th element lies (a cumulative sum of
the histogram), keeping k's rank among the remaining candidates.  After the last digit the key
is known exactly; it is mapped back to the float.  -0.0 comes back as -0.0 where +0.0 ties
with it, which compares equal, so the mask ``x < tau`` is unchanged.

``TRITON_INTERPRET=1`` (set before this module is imported) runs the kernel on CPU tensors,
which is how the test suite checks it on machines without a GPU.
"""
import torch
import triton
import triton.language as tl

# Digits of the 32-bit key, most significant first.  The first digit covers the sign, the
# exponent and 3 mantissa bits, so one pass already splits values by their binade.
DIGITS = (12, 10, 10)
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _radix_pass(base, L, prefix, k_rem, DONE: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One digit: histogram of the BITS bits after the DONE bits fixed in ``prefix``.

    Returns the digit in which the k_rem-th smallest candidate lies and its rank within it.
    """
    SHIFT: tl.constexpr = 32 - DONE - BITS
    NBINS: tl.constexpr = 1 << BITS
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros([NBINS], dtype=tl.int32)
    for start in range(0, L, BLOCK):
        idx = start + offs
        inside = idx < L
        v = tl.load(base + idx, mask=inside, other=0.0).to(tl.float32)
        bits = v.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) | -2147483648)  # unsigned order of the key = float order
        digit = (key >> SHIFT) & (NBINS - 1)
        if DONE > 0:
            high = (key >> (SHIFT + BITS)) & ((1 << DONE) - 1)
            inside = inside & (high == prefix)
        hist += tl.histogram(digit, NBINS, mask=inside)
    cum = tl.cumsum(hist, 0)
    digit = tl.sum((cum < k_rem).to(tl.int32), 0)  # first bin whose cumulative count reaches k
    before = tl.sum(tl.where(tl.arange(0, NBINS) < digit, hist, 0), 0)
    return digit, k_rem - before


@triton.jit
def _kth_smallest_kernel(x_ptr, out_ptr, L, row_stride, k, D0: tl.constexpr, D1: tl.constexpr,
                         D2: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * row_stride
    d, k_rem = _radix_pass(base, L, 0, k, 0, D0, BLOCK)
    prefix = d
    d, k_rem = _radix_pass(base, L, prefix, k_rem, D0, D1, BLOCK)
    prefix = (prefix << D1) | d
    d, k_rem = _radix_pass(base, L, prefix, k_rem, D0 + D1, D2, BLOCK)
    key = (prefix << D2) | d
    bits = key ^ (((key >> 31) ^ -1) | -2147483648)  # the inverse of the key map
    tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))


def kth_smallest(rows, k, digits=DIGITS):
    """The exact k-th smallest (1-based) of each row: rows [R, L] float16/bfloat16/float32 -> [R]."""
    R, L = rows.shape
    if not 1 <= k <= L:
        raise ValueError(f"k={k} must be in [1, {L}]")
    if rows.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"kth_smallest takes float16, bfloat16 or float32 rows, not {rows.dtype}")
    if len(digits) != 3 or sum(digits) != 32:
        raise ValueError(f"digits={digits!r} must be three digit widths adding up to 32 bits")
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(R, dtype=torch.float32, device=rows.device)
    _kth_smallest_kernel[(R,)](rows, out, L, rows.stride(0), k, *digits, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out.to(rows.dtype)
