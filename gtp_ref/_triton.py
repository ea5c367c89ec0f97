"""Triton kernels of the fast backend (``gtp_ref.fast``).  Imported only where Triton is present.

Used by the fast backend: ``softmax_rows`` and ``mask_and_reduce`` fuse GTP's attention map --
the scaled logits plus log s into a row softmax; the masking below the sparsity threshold with
the cast for ``Att v`` and the column sums and diagonal the scores need -- one pass each.

Benchmark candidates, not used by the fast backend: ``attention_probs`` (q k^T and the
softmax in one kernel, reading q and k straight from the qkv projection; ``python -m
gtp_ref.bench attention``, not yet timed on a GPU), and ``kth_smallest``, ``kth_smallest_radix``
and ``kth_smallest_bracket``, exact k-th smallest values of every row of a [R, L] tensor (GTP's
sparsity threshold with one row per image and head, L = N^2).  On an H100 ``kth_smallest`` and
``kth_smallest_radix`` lost to ``torch.topk``, which the fast backend uses (``python -m gtp_ref.bench threshold``;
docs/performance.md): one program per row is a long serial chain at about one resident program
per SM.  ``kth_smallest_bracket`` spreads every row over many programs; it was written after
the GPU session and is tested exact (interpreter), but not yet timed on a GPU.

``kth_smallest``, per row, one program (Floyd-Rivest style selection):

1. a systematic sample of SAMPLE keys (every L/SAMPLE-th entry), sorted; the sample ranks
   around k's quantile, +- SPREAD, bracket the k-th value with overwhelming probability;
2. one pass over the row counts the entries below the bracket and compacts those inside it
   into a scratch row (a prefix sum gives each candidate its slot);
3. if the k-th value is among the candidates (count below < k <= count below + candidates,
   and they fit in CAP slots), the candidates are sorted and the answer read off at its rank;
   otherwise (rare: adversarial inputs, huge tie groups) the radix selection below.
Keys: a float's bits as int32, negatives with their magnitude bits flipped, so that signed
integer order is float order.

``kth_smallest_radix``, per row: map each float to a 32-bit key whose unsigned order is the
float order (flip all bits of negatives, the sign bit of the rest); for the digits of the key
from the top (``DIGITS`` bits each), histogram the elements that match the digits fixed so far
by their next digit and fix the digit in whose bin the k-th element lies (a cumulative sum),
keeping k's rank among the remaining candidates; after the last digit the key is exact.

Both return -0.0 where +0.0 ties with it (or the reverse); they compare equal as floats, so the
mask ``x < tau`` is unchanged.  ``TRITON_INTERPRET=1`` (set before this module is imported)
runs every kernel here on CPU tensors, which is how the test suite checks them without a GPU.
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
def _radix_select(base, L, k, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, BLOCK: tl.constexpr):
    """The float bits (int32) of the k-th smallest of base[0:L], by three radix passes."""
    d, k_rem = _radix_pass(base, L, 0, k, 0, D0, BLOCK)
    prefix = d
    d, k_rem = _radix_pass(base, L, prefix, k_rem, D0, D1, BLOCK)
    prefix = (prefix << D1) | d
    d, k_rem = _radix_pass(base, L, prefix, k_rem, D0 + D1, D2, BLOCK)
    key = (prefix << D2) | d
    return key ^ (((key >> 31) ^ -1) | -2147483648)  # the inverse of the key map


@triton.jit(do_not_specialize=["L", "k"])
def _kth_smallest_kernel(x_ptr, out_ptr, L, row_stride, k, D0: tl.constexpr, D1: tl.constexpr,
                         D2: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    bits = _radix_select(x_ptr + row.to(tl.int64) * row_stride, L, k, D0, D1, D2, BLOCK)
    tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))




@triton.jit
def _signed_key(v):
    """float32 -> int32 whose signed order is the float order."""
    bits = v.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit(do_not_specialize=["L", "k"])
def _select_kernel(x_ptr, out_ptr, scratch_ptr, L, row_stride, k, SAMPLE: tl.constexpr,
                   SPREAD: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr, D0: tl.constexpr,
                   D1: tl.constexpr, D2: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * row_stride
    # 1. the bracket [lo, hi] from a sorted systematic sample
    i = tl.arange(0, SAMPLE)
    sample = _signed_key(tl.load(base + (i.to(tl.int64) * L) // SAMPLE).to(tl.float32))
    sample = tl.sort(sample)
    r = ((k - 1).to(tl.int64) * SAMPLE) // L  # k's rank in the sample
    lo_rank, hi_rank = tl.maximum(r - SPREAD, 0), tl.minimum(r + SPREAD, SAMPLE - 1)
    lo = tl.sum(tl.where(i == lo_rank, sample, 0), 0)
    hi = tl.sum(tl.where(i == hi_rank, sample, 0), 0)
    lo = tl.where(lo_rank == 0, -2147483648, lo)  # the ends of the sample open the bracket
    hi = tl.where(hi_rank == SAMPLE - 1, 2147483647, hi)
    # 2. count below the bracket, compact the candidates inside it
    offs = tl.arange(0, BLOCK)
    scratch = scratch_ptr + row.to(tl.int64) * CAP
    below = 0
    found = 0
    for start in range(0, L, BLOCK):
        idx = start + offs
        inside = idx < L
        key = _signed_key(tl.load(base + idx, mask=inside, other=0.0).to(tl.float32))
        below += tl.sum((inside & (key < lo)).to(tl.int32), 0)
        cand = inside & (key >= lo) & (key <= hi)
        slot = found + tl.cumsum(cand.to(tl.int32), 0) - 1
        tl.store(scratch + slot, key, mask=cand & (slot < CAP))
        found += tl.sum(cand.to(tl.int32), 0)
    # 3. the answer among the candidates, or the exact radix selection
    if (below < k) & (k <= below + found) & (found <= CAP):
        j = tl.arange(0, CAP)
        cands = tl.sort(tl.load(scratch + j, mask=j < found, other=2147483647))
        key = tl.sum(tl.where(j == k - below - 1, cands, 0), 0)
        bits = key ^ ((key >> 31) & 0x7FFFFFFF)  # the signed key map is its own inverse
    else:
        bits = _radix_select(base, L, k, D0, D1, D2, BLOCK)
    tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))


SAMPLE, SPREAD = 4096, 128  # sample ranks k's quantile +- 128: about 4 standard deviations
MAX_SELECT_LEN = 1 << 16  # longer rows: candidates would not fit a sortable CAP


def select_capacity(L, sample=SAMPLE, spread=SPREAD):
    """Scratch slots per row: 1.5 x the expected candidate count (2 spread / sample of L), a power of 2."""
    return max(256, triton.next_power_of_2(int(1.5 * L * 2 * spread / sample) + 1))


def _check_digits(digits):
    if len(digits) != 3 or sum(digits) != 32:
        raise ValueError(f"digits={digits!r} must be three digit widths adding up to 32 bits")


def _check_rows(rows, k):
    R, L = rows.shape
    if not 1 <= k <= L:
        raise ValueError(f"k={k} must be in [1, {L}]")
    if rows.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"kth_smallest takes float16, bfloat16 or float32 rows, not {rows.dtype}")
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def kth_smallest(rows, k, sample=SAMPLE, spread=SPREAD, digits=DIGITS, num_warps=NUM_WARPS):
    """The exact k-th smallest (1-based) of each row: rows [R, L] float16/bfloat16/float32 -> [R].

    Rows longer than MAX_SELECT_LEN (N > 256 tokens for an attention map) use ``kth_smallest_radix``.
    """
    rows = _check_rows(rows, k)
    R, L = rows.shape
    if L > MAX_SELECT_LEN:
        return kth_smallest_radix(rows, k, digits)
    _check_digits(digits)
    cap = select_capacity(L, sample, spread)
    out = torch.empty(R, dtype=torch.float32, device=rows.device)
    scratch = torch.empty(R, cap, dtype=torch.int32, device=rows.device)
    _select_kernel[(R,)](rows, out, scratch, L, rows.stride(0), k, SAMPLE=sample, SPREAD=spread, CAP=cap,
                         BLOCK=BLOCK, D0=digits[0], D1=digits[1], D2=digits[2], num_warps=num_warps)
    return out.to(rows.dtype)


def kth_smallest_radix(rows, k, digits=DIGITS):
    """The same by radix selection alone (three histogram passes over every row)."""
    rows = _check_rows(rows, k)
    _check_digits(digits)
    R, L = rows.shape
    out = torch.empty(R, dtype=torch.float32, device=rows.device)
    _kth_smallest_kernel[(R,)](rows, out, L, rows.stride(0), k, *digits, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out.to(rows.dtype)


# ---- many programs per row: bracket, then parallel bucket counts --------------------------------
INT32_MIN, INT32_MAX = -2147483648, 2147483647


@triton.jit(do_not_specialize=["L", "k"])
def _bracket_kernel(x_ptr, lo_ptr, hi_ptr, L, row_stride, k, SAMPLE: tl.constexpr, SPREAD: tl.constexpr):
    """[lo, hi] (signed keys) around the k-th smallest from a sorted systematic sample of the row."""
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * row_stride
    i = tl.arange(0, SAMPLE)
    sample = tl.sort(_signed_key(tl.load(base + (i.to(tl.int64) * L) // SAMPLE).to(tl.float32)))
    r = ((k - 1).to(tl.int64) * SAMPLE) // L  # k's rank in the sample
    lo_rank, hi_rank = tl.maximum(r - SPREAD, 0), tl.minimum(r + SPREAD, SAMPLE - 1)
    lo = tl.sum(tl.where(i == lo_rank, sample, 0), 0).to(tl.int64)
    hi = tl.sum(tl.where(i == hi_rank, sample, 0), 0).to(tl.int64)
    lo = tl.where(lo_rank == 0, -2147483648, lo)  # the sample's ends open the bracket
    hi = tl.where(hi_rank == SAMPLE - 1, 2147483647, hi)
    tl.store(lo_ptr + row, lo)
    tl.store(hi_ptr + row, tl.maximum(hi, lo + 1))  # lo == hi means "found": a guess must be checked


@triton.jit(do_not_specialize=["L"])
def _count_kernel(x_ptr, lo_ptr, hi_ptr, below_ptr, hist_ptr, L, row_stride, num_chunks,
                  NB: tl.constexpr, CHUNK: tl.constexpr):
    """One chunk of one row: entries below lo, and a histogram of [lo, hi] in NB equal buckets."""
    row, chunk = tl.program_id(0), tl.program_id(1)
    lo, hi = tl.load(lo_ptr + row), tl.load(hi_ptr + row)
    out = row.to(tl.int64) * num_chunks + chunk
    if lo < hi:  # rows already narrowed to one key do no work
        idx = chunk * CHUNK + tl.arange(0, CHUNK)
        inside_row = idx < L
        v = tl.load(x_ptr + row.to(tl.int64) * row_stride + idx, mask=inside_row, other=0.0)
        key = _signed_key(v.to(tl.float32)).to(tl.int64)
        tl.store(below_ptr + out, tl.sum((inside_row & (key < lo)).to(tl.int32), 0))
        inside = inside_row & (key >= lo) & (key <= hi)
        bucket = tl.where(inside, ((key - lo) * NB) // (hi - lo + 1), 0).to(tl.int32)
        tl.store(hist_ptr + out * NB + tl.arange(0, NB), tl.histogram(bucket, NB, mask=inside))


@triton.jit(do_not_specialize=["k"])
def _narrow_kernel(lo_ptr, hi_ptr, below_ptr, hist_ptr, num_chunks, k, NB: tl.constexpr,
                   CHUNKS: tl.constexpr):
    """The bucket holding the k-th smallest becomes the row's bracket (or, if the sampled bracket
    missed it, the whole key range)."""
    row = tl.program_id(0)
    lo, hi = tl.load(lo_ptr + row), tl.load(hi_ptr + row)
    if lo < hi:
        below = tl.zeros([CHUNKS], dtype=tl.int32)
        hist = tl.zeros([NB], dtype=tl.int32)
        for c0 in range(0, num_chunks, CHUNKS):
            c = c0 + tl.arange(0, CHUNKS)
            at = row.to(tl.int64) * num_chunks + c
            below += tl.load(below_ptr + at, mask=c < num_chunks, other=0)
            hist += tl.sum(tl.load(hist_ptr + at[:, None] * NB + tl.arange(0, NB)[None, :],
                                   mask=(c < num_chunks)[:, None], other=0), 0)
        n_below = tl.sum(below, 0)
        if (n_below < k) & (k <= n_below + tl.sum(hist, 0)):
            cum = tl.cumsum(hist, 0)
            b = tl.sum((cum < k - n_below).to(tl.int64), 0)  # the bucket of the k-th smallest
            span = hi - lo + 1
            new_lo = lo + (b * span + NB - 1) // NB  # keys of bucket b: ceil(b span / NB) ...
            new_hi = lo + ((b + 1) * span + NB - 1) // NB - 1  # ... to ceil((b + 1) span / NB) - 1
            tl.store(lo_ptr + row, new_lo)
            tl.store(hi_ptr + row, new_hi)
        else:
            tl.store(lo_ptr + row, -2147483648)
            tl.store(hi_ptr + row, 2147483647)


def kth_smallest_bracket(rows, k, sample=1024, spread=72, buckets=256, chunk=4096):
    """The exact k-th smallest of each row with many programs per row (a benchmark candidate).

    A sorted sample brackets the answer (``_bracket_kernel``); then each round, every chunk of
    every row counts its entries below the bracket and histograms the bracket into ``buckets``
    equal key ranges (``_count_kernel``, one program per chunk: the whole GPU works on every
    row), and the bucket holding the k-th value becomes the new bracket (``_narrow_kernel``).
    A bracket of 2^32 keys narrows to one key in log_buckets(2^32) rounds; one more round covers
    a sampled bracket that missed (then the whole key range is searched).  The number of rounds
    is fixed (no host synchronisation); rows that are done skip their chunks' work.
    """
    rows = _check_rows(rows, k)
    R, L = rows.shape
    if buckets & (buckets - 1) or not 2 <= buckets <= 4096:
        raise ValueError(f"buckets={buckets} must be a power of 2 in [2, 4096]")
    num_chunks = triton.cdiv(L, chunk)
    lo = torch.empty(R, dtype=torch.int64, device=rows.device)
    hi = torch.empty_like(lo)
    below = torch.empty(R, num_chunks, dtype=torch.int32, device=rows.device)
    hist = torch.empty(R, num_chunks, buckets, dtype=torch.int32, device=rows.device)
    _bracket_kernel[(R,)](rows, lo, hi, L, rows.stride(0), k, SAMPLE=sample, SPREAD=spread, num_warps=4)
    bits_per_round = buckets.bit_length() - 1
    for _ in range(1 + -(-32 // bits_per_round)):
        _count_kernel[(R, num_chunks)](rows, lo, hi, below, hist, L, rows.stride(0), num_chunks,
                                       NB=buckets, CHUNK=chunk, num_warps=4)
        _narrow_kernel[(R,)](lo, hi, below, hist, num_chunks, k, NB=buckets, CHUNKS=16, num_warps=4)
    key = lo.to(torch.int32)
    return (key ^ ((key >> 31) & 0x7FFFFFFF)).view(torch.float32).to(rows.dtype)


# ---- the fused attention map ------------------------------------------------------------------
@triton.jit
def _softmax_kernel(logits_ptr, log_s_ptr, out_ptr, num_rows, N, H, scale, HAS_LOG_S: tl.constexpr,
                    F64: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # rows of the [B*H*N, N] logits
    cols = tl.arange(0, BLOCK_N)
    m = (rows < num_rows)[:, None] & (cols < N)[None, :]
    off = rows.to(tl.int64)[:, None] * N + cols[None, :]
    z = tl.load(logits_ptr + off, mask=m, other=0.0)
    if F64:  # scaled by the caller, in float64
        z = z.to(tl.float64)
    else:  # q k^T / sqrt(d) as torch computes it: in float32, rounded to the logits' dtype
        z = (z.to(tl.float32) * scale).to(logits_ptr.dtype.element_ty).to(tl.float32)
    if HAS_LOG_S:
        image = rows // (H * N)
        z = z + tl.load(log_s_ptr + image.to(tl.int64)[:, None] * N + cols[None, :], mask=m, other=0.0)
    z = tl.where((cols < N)[None, :], z, float("-inf"))  # rows past the end stay finite (0): no NaN
    e = tl.exp(z - tl.max(z, 1)[:, None])
    p = e / tl.sum(e, 1)[:, None]
    tl.store(out_ptr + off, p.to(out_ptr.dtype.element_ty), mask=m)


def softmax_rows(logits, scale, log_s=None, out_dtype=torch.float32):
    """softmax(logits * scale + log s) over the last dimension: logits [B, H, N, N], log_s [B, N].

    Computed in float64 when logits or out_dtype are float64, else in float32; written in out_dtype.
    """
    B, H, N, _ = logits.shape
    f64 = torch.float64 in (logits.dtype, out_dtype)
    if f64:  # a Python float reaches the kernel as float32: scale here, exactly as torch does
        logits, scale = logits * scale, 1.0
    logits = logits.contiguous()
    out = torch.empty(logits.shape, dtype=out_dtype, device=logits.device)
    block_n = triton.next_power_of_2(N)
    rows_per_program = max(1, 2048 // block_n)
    num_rows = B * H * N
    has_log_s = log_s is not None
    log_s = log_s.to(torch.float64 if f64 else torch.float32).contiguous() if has_log_s else logits
    grid = (triton.cdiv(num_rows, rows_per_program),)
    _softmax_kernel[grid](logits, log_s, out, num_rows, N, H, float(scale), HAS_LOG_S=has_log_s, F64=f64,
                          BLOCK_N=block_n, ROWS=rows_per_program, num_warps=4)
    return out


@triton.jit
def _mask_reduce_kernel(p_ptr, tau_ptr, out_ptr, colsum_ptr, diag_ptr, N, HAS_TAU: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    head = tl.program_id(0)  # image x head
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    base = head.to(tl.int64) * N * N
    col_sum = tl.zeros([BLOCK_C], dtype=colsum_ptr.dtype.element_ty)  # float32, float64 for float64
    diag = tl.zeros([BLOCK_C], dtype=colsum_ptr.dtype.element_ty)
    for r0 in range(0, N, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        m = (rows < N)[:, None] & (cols < N)[None, :]
        off = base + rows[:, None] * N + cols[None, :]
        v = tl.load(p_ptr + off, mask=m, other=0.0)
        if HAS_TAU:
            v = tl.where(v < tl.load(tau_ptr + head), 0.0, v)  # entries below tau -> 0
        tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=m)
        v = v.to(colsum_ptr.dtype.element_ty)
        col_sum += tl.sum(v, 0)
        diag += tl.sum(tl.where(rows[:, None] == cols[None, :], v, 0.0), 0)
    out = head.to(tl.int64) * N + cols
    tl.store(colsum_ptr + out, col_sum, mask=cols < N)
    tl.store(diag_ptr + out, diag, mask=cols < N)


def mask_and_reduce(probs, tau=None, out_dtype=None):
    """probs [B, H, N, N], tau [B, H] (or its B*H values flat) or None -> (masked map in out_dtype,
    column sums, diagonal).

    masked = probs with entries < tau set to 0; column sums and diagonal [B, H, N] of the masked
    map in probs' dtype (accumulated in float32, or float64 for float64).
    """
    B, H, N, _ = probs.shape
    probs = probs.contiguous()
    masked = torch.empty(probs.shape, dtype=out_dtype or probs.dtype, device=probs.device)
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    col_sums = torch.empty(B, H, N, dtype=acc, device=probs.device)
    diag = torch.empty_like(col_sums)
    block_c = 64
    grid = (B * H, triton.cdiv(N, block_c))
    _mask_reduce_kernel[grid](probs, probs if tau is None else tau.contiguous(), masked, col_sums, diag, N,
                              HAS_TAU=tau is not None, BLOCK_R=32, BLOCK_C=block_c, num_warps=4)
    return masked, col_sums.to(probs.dtype), diag.to(probs.dtype)


# ---- a benchmark candidate: q k^T and the softmax in one kernel ----------------------------------
@triton.jit
def _attention_probs_kernel(q_ptr, k_ptr, log_s_ptr, out_ptr, N, H, D, scale, sqb, sqh, sqn, skb, skh, skn,
                            HAS_LOG_S: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)  # image x head
    b, h = bh // H, bh % H
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
    cols = tl.arange(0, BLOCK_N)  # every key: the whole row of the map is in one tile
    d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + rows[:, None] * sqn + d[None, :],
                mask=(rows < N)[:, None] & (d < D)[None, :], other=0.0)
    k = tl.load(k_ptr + b.to(tl.int64) * skb + h * skh + cols[:, None] * skn + d[None, :],
                mask=(cols < N)[:, None] & (d < D)[None, :], other=0.0)
    if IEEE:  # float32 inputs: full float32 products, as torch's matmul (no TF32)
        z = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        z = tl.dot(q, tl.trans(k))  # float16 / bfloat16 products, float32 accumulation
    z = z.to(q_ptr.dtype.element_ty).to(tl.float32)  # q k^T in the inputs' dtype, as the matmul returns it
    z = (z * scale).to(q_ptr.dtype.element_ty).to(tl.float32)  # / sqrt(d) in float32, rounded as torch does
    if HAS_LOG_S:
        z = z + tl.load(log_s_ptr + b.to(tl.int64) * N + cols, mask=cols < N, other=0.0)[None, :]
    z = tl.where((cols < N)[None, :], z, float("-inf"))
    e = tl.exp(z - tl.max(z, 1)[:, None])
    p = e / tl.sum(e, 1)[:, None]
    tl.store(out_ptr + bh.to(tl.int64) * N * N + rows[:, None] * N + cols[None, :], p,
             mask=(rows < N)[:, None] & (cols < N)[None, :])


def attention_probs(q, k, scale, log_s=None, block_m=32):
    """softmax(q k^T * scale + log s) in one kernel: q, k [B, H, N, d] float16 / bfloat16 /
    float32 (any strides with a unit last one, e.g. views of the qkv projection), log_s [B, N]
    -> float32 [B, H, N, N] (a benchmark candidate, ``python -m gtp_ref.bench attention``).

    The same rounding steps as the reference under autocast: q k^T accumulated in float32 and
    rounded to the inputs' dtype, scaled and rounded again, then + log s and the softmax in
    float32.  The products are summed in another order than cuBLAS's, so a logit can round to
    the neighbouring float16 value: not bit-identical to the torch path.
    """
    B, H, N, D = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        raise ValueError(f"attention_probs takes float16, bfloat16 or float32 q and k of one dtype, "
                         f"not {q.dtype} and {k.dtype}")
    if N > MAX_ROW_TOKENS:
        raise ValueError(f"attention_probs holds a whole row of the map in one tile: N={N} must be <= {MAX_ROW_TOKENS}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    out = torch.empty(B, H, N, N, dtype=torch.float32, device=q.device)
    has_log_s = log_s is not None
    log_s = log_s.float().contiguous() if has_log_s else out
    grid = (B * H, triton.cdiv(N, block_m))
    _attention_probs_kernel[grid](q, k, log_s, out, N, H, D, float(scale), q.stride(0), q.stride(1), q.stride(2),
                                  k.stride(0), k.stride(1), k.stride(2), HAS_LOG_S=has_log_s,
                                  IEEE=q.dtype == torch.float32, BLOCK_M=block_m,
                                  BLOCK_N=max(16, triton.next_power_of_2(N)),
                                  BLOCK_D=max(16, triton.next_power_of_2(D)), num_warps=8)
    return out


MAX_ROW_TOKENS = 512  # a [BLOCK_M, N] float32 tile per program


# Triton decides when a kernel is defined (at import) whether it is compiled for the GPU or run by
# its interpreter on CPU tensors (TRITON_INTERPRET=1); the fast backend asks which.  The kernel's
# own type says so in every Triton version (``triton.knobs`` exists only in recent ones).
INTERPRETED = type(_softmax_kernel).__name__ == "InterpretedFunction"
