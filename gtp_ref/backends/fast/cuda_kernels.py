"""The Triton kernels of the fast backend's CUDA path; ``gtp_ref.backends.fast.cuda`` launches
them and says what each does.  Every kernel is a pass over the recomputed attention map of one
image's head (``_stats_kernel``, ``_collect_kernel``, ``_output_kernel``: a program per row tile;
``_fallback_kernel``) or over a head's sample or collected entries (``_bracket_kernel``,
``_select_kernel``: a program per head)."""

import triton
import triton.language as tl

# Ints that differ from call to call (token counts, strides, ranks) are not specialised on (Triton
# would compile a kernel per value class: equal to 1, divisible by 16): one compiled kernel serves all.
VARYING = (
    "N",
    "H",
    "kth",
    "cap",
    "sqb",
    "sqh",
    "sqn",
    "skb",
    "skh",
    "skn",
    "svb",
    "svh",
    "svn",
    "sob",
    "soh",
    "son",
    "stride",
    "row_slots",
    "count_tiles",
)


def _jit(fn):
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return triton.jit(fn, do_not_specialize=[n for n in VARYING if n in names])


@triton.jit
def _logits(
    q_tile,
    k_ptr,
    log_s_ptr,
    b,
    k0,
    N,
    skn,
    offs_d,
    D,
    ROUND_TO: tl.constexpr,
    HAS_LOG_S: tl.constexpr,
    KEYS: tl.constexpr,
    ACC: tl.constexpr,
):
    """z = q k^T (+ log s) for the program's rows and keys k0..k0+KEYS: [ROWS, KEYS] in ACC; -inf
    outside the map."""
    keys = k0 + tl.arange(0, KEYS)
    key_ok = keys < N
    k_tile = tl.load(
        k_ptr + keys.to(tl.int64)[:, None] * skn + offs_d[None, :],
        mask=key_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )
    z = tl.dot(q_tile, tl.trans(k_tile), input_precision="ieee", out_dtype=ACC)
    if ROUND_TO:  # autocast: the matmul's output is in q's dtype
        z = z.to(q_tile.dtype)
    z = z.to(ACC)
    if HAS_LOG_S:
        z = z + tl.load(log_s_ptr + b.to(tl.int64) * N + keys, mask=key_ok, other=0.0).to(ACC)[None, :]
    return tl.where(key_ok[None, :], z, float("-inf")), keys


@triton.jit
def _q_tile(q_ptr, rows, N, sqn, offs_d, D):
    return tl.load(
        q_ptr + rows.to(tl.int64)[:, None] * sqn + offs_d[None, :],
        mask=(rows < N)[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )


@triton.jit
def _probs(
    q_tile,
    k_ptr,
    log_s_ptr,
    b,
    k0,
    N,
    skn,
    offs_d,
    D,
    row_max,
    row_sum,
    rows,
    ROUND_TO: tl.constexpr,
    HAS_LOG_S: tl.constexpr,
    KEYS: tl.constexpr,
    ACC: tl.constexpr,
):
    """The map's entries exp(z - max) / sum for the program's rows and keys k0..k0+KEYS (0 outside)."""
    z, keys = _logits(q_tile, k_ptr, log_s_ptr, b, k0, N, skn, offs_d, D, ROUND_TO, HAS_LOG_S, KEYS, ACC)
    p = tl.exp(z - row_max[:, None]) / row_sum[:, None]
    return tl.where((rows < N)[:, None] & (keys < N)[None, :], p, 0.0), keys


@_jit
def _stats_kernel(
    q_ptr,
    k_ptr,
    log_s_ptr,
    stats_ptr,
    sample_ptr,
    N,
    H,
    D,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    stride,
    row_slots,
    HAS_LOG_S: tl.constexpr,
    ROUND_TO: tl.constexpr,
    F64: tl.constexpr,
    SAMPLED: tl.constexpr,
    ROWS: tl.constexpr,
    KEYS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    bh, tile = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    q_ptr += b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr += b.to(tl.int64) * skb + h.to(tl.int64) * skh
    rows = tile * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    q_tile = _q_tile(q_ptr, rows, N, sqn, offs_d, D)
    row_max = tl.full([ROWS], float("-inf"), ACC)
    for k0 in range(0, N, KEYS):
        z, _ = _logits(q_tile, k_ptr, log_s_ptr, b, k0, N, skn, offs_d, D, ROUND_TO, HAS_LOG_S, KEYS, ACC)
        row_max = tl.maximum(row_max, tl.max(z, 1))
    row_max = tl.where(rows < N, row_max, 0.0)
    row_sum = tl.zeros([ROWS], ACC)
    for k0 in range(0, N, KEYS):
        z, keys = _logits(q_tile, k_ptr, log_s_ptr, b, k0, N, skn, offs_d, D, ROUND_TO, HAS_LOG_S, KEYS, ACC)
        e = tl.exp(z - row_max[:, None])
        row_sum += tl.sum(e, 1)
        if SAMPLED:  # the entries with (row + key) % stride == 0, unnormalised: slot key // stride of the row
            pick = ((rows[:, None] + keys[None, :]) % stride == 0) & (rows < N)[:, None] & (keys < N)[None, :]
            slot = (
                bh.to(tl.int64) * N * row_slots
                + rows.to(tl.int64)[:, None] * row_slots
                + (keys // stride)[None, :]
            )
            tl.store(sample_ptr + slot, e, mask=pick)
    out = stats_ptr + bh.to(tl.int64) * 2 * N
    tl.store(out + rows, row_max, mask=rows < N)
    tl.store(out + N + rows, row_sum, mask=rows < N)


@triton.jit
def _sample_keys(sample_ptr, stats_ptr, bh, c0, N, stride, row_slots, KEY: tl.constexpr, CHUNK: tl.constexpr):
    """Entries c0..c0+CHUNK of a head's sample, normalised by their rows' sums, as keys (a float's
    bits, which order as non-negative floats do), and which of them are entries of the map."""
    i = c0 + tl.arange(0, CHUNK)
    row, slot = i // row_slots, i % row_slots
    key = slot * stride + (stride - row % stride) % stride
    ok = (row < N) & (key < N)
    e = tl.load(sample_ptr + bh.to(tl.int64) * N * row_slots + i, mask=ok, other=0.0)
    row_sum = tl.load(stats_ptr + bh.to(tl.int64) * 2 * N + N + row, mask=ok, other=1.0)
    return tl.where(ok, e / row_sum, 0.0).to(KEY, bitcast=True), ok


@triton.jit
def _pick_digit(hist, k_rem):
    """The first bin of ``hist`` whose cumulative count reaches rank ``k_rem`` (1-based), and the
    rank left inside it."""
    cum = tl.cumsum(hist, 0)
    digit = tl.sum((cum < k_rem).to(tl.int32), 0)
    return digit, k_rem - tl.sum(tl.where(tl.arange(0, 256) < digit, hist, 0), 0)


@_jit
def _bracket_kernel(
    stats_ptr,
    sample_ptr,
    bounds_ptr,
    N,
    kth,
    stride,
    row_slots,
    spread,
    F64: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """lo, hi of one head: the edges of the 16-bit bins (of the floats' bits) that hold the sample's
    entries ``spread`` standard errors of the quantile kth / N^2 below and above it -- two digits
    of a radix selection over the sample, read from memory in chunks; the first digit's histogram
    serves both."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    KEY: tl.constexpr = tl.int64 if F64 else tl.int32
    BITS: tl.constexpr = 64 if F64 else 32
    bh = tl.program_id(0)
    total = N * row_slots
    count = 0
    hist = tl.zeros([256], tl.int32)
    for c0 in range(0, total, CHUNK):  # the top 8 bits
        key, ok = _sample_keys(sample_ptr, stats_ptr, bh, c0, N, stride, row_slots, KEY, CHUNK)
        count += tl.sum(ok.to(tl.int32), 0)
        hist += tl.histogram(((key >> (BITS - 8)) & 255).to(tl.int32), 256, mask=ok)
    q = kth.to(ACC) / (N.to(ACC) * N)
    centre = q * count
    half = spread * tl.sqrt(tl.maximum(count * q * (1 - q), 1.0)) + 2
    lo_rank = tl.maximum(centre - half, 0.0).to(tl.int32) + 1  # 1-based ranks in the sample
    hi_rank = tl.minimum(centre + half, count - 1.0).to(tl.int32) + 1
    lo_top, lo_rem = _pick_digit(hist, lo_rank)
    hi_top, hi_rem = _pick_digit(hist, hi_rank)
    lo_hist, hi_hist = tl.zeros([256], tl.int32), tl.zeros([256], tl.int32)
    for c0 in range(0, total, CHUNK):  # the next 8 bits, within each bound's top bin
        key, ok = _sample_keys(sample_ptr, stats_ptr, bh, c0, N, stride, row_slots, KEY, CHUNK)
        top, digit = (key >> (BITS - 8)) & 255, ((key >> (BITS - 16)) & 255).to(tl.int32)
        lo_hist += tl.histogram(digit, 256, mask=ok & (top == lo_top))
        hi_hist += tl.histogram(digit, 256, mask=ok & (top == hi_top))
    lo_next, _ = _pick_digit(lo_hist, lo_rem)
    hi_next, _ = _pick_digit(hi_hist, hi_rem)
    lo_key = ((lo_top.to(KEY) << 8) | lo_next.to(KEY)) << (BITS - 16)  # the lower edge of lo's bin ...
    # ... hi's upper
    hi_key = (((hi_top.to(KEY) << 8) | hi_next.to(KEY)) << (BITS - 16)) | ((1 << (BITS - 16)) - 1)
    # nothing below: everything from 0 is inside
    lo = tl.where(lo_rank <= 1, 0.0, lo_key.to(ACC, bitcast=True))
    tl.store(bounds_ptr + bh * 2, lo)
    tl.store(bounds_ptr + bh * 2 + 1, hi_key.to(ACC, bitcast=True))


@_jit
def _collect_kernel(
    q_ptr,
    k_ptr,
    log_s_ptr,
    stats_ptr,
    bounds_ptr,
    counts_ptr,
    buffer_ptr,
    N,
    H,
    D,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    cap,
    HAS_LOG_S: tl.constexpr,
    ROUND_TO: tl.constexpr,
    F64: tl.constexpr,
    ROWS: tl.constexpr,
    KEYS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Count the entries below lo; append the entries in [lo, hi] to the head's buffer."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    bh, tile = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    q_ptr += b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr += b.to(tl.int64) * skb + h.to(tl.int64) * skh
    rows = tile * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    q_tile = _q_tile(q_ptr, rows, N, sqn, offs_d, D)
    stats = stats_ptr + bh.to(tl.int64) * 2 * N
    row_max = tl.load(stats + rows, mask=rows < N, other=0.0)
    row_sum = tl.load(stats + N + rows, mask=rows < N, other=1.0)
    lo, hi = tl.load(bounds_ptr + bh * 2), tl.load(bounds_ptr + bh * 2 + 1)
    below = tl.zeros([ROWS], tl.int32)
    for k0 in range(0, N, KEYS):
        p, keys = _probs(
            q_tile,
            k_ptr,
            log_s_ptr,
            b,
            k0,
            N,
            skn,
            offs_d,
            D,
            row_max,
            row_sum,
            rows,
            ROUND_TO,
            HAS_LOG_S,
            KEYS,
            ACC,
        )
        real = (rows < N)[:, None] & (keys < N)[None, :]
        below += tl.sum((real & (p < lo)).to(tl.int32), 1)
        inside = tl.reshape(real & (p >= lo) & (p <= hi), [ROWS * KEYS])
        n_inside = tl.sum(inside.to(tl.int32), 0)
        start = tl.atomic_add(counts_ptr + bh * 2 + 1, n_inside)  # this step's slots in the buffer
        at = start + tl.cumsum(inside.to(tl.int32), 0) - 1
        tl.store(
            buffer_ptr + bh.to(tl.int64) * cap + at, tl.reshape(p, [ROWS * KEYS]), mask=inside & (at < cap)
        )
    tl.atomic_add(counts_ptr + bh * 2, tl.sum(below, 0))


@_jit
def _select_kernel(
    counts_ptr, buffer_ptr, tau_ptr, settled_ptr, kth, cap, F64: tl.constexpr, CHUNK: tl.constexpr
):
    """tau of one head from its collected entries, where they hold it: the (kth - below)-th smallest
    of them, by radix selection over 8-bit digits, the buffer read in chunks.  Else the head is
    unsettled (tau is then the fallback's to find)."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    KEY: tl.constexpr = tl.int64 if F64 else tl.int32
    DIGITS: tl.constexpr = 8 if F64 else 4
    bh = tl.program_id(0)
    below, inside = tl.load(counts_ptr + bh * 2), tl.load(counts_ptr + bh * 2 + 1)
    settled = (below < kth) & (kth <= below + inside) & (inside <= cap)
    tl.store(settled_ptr + bh, settled.to(tl.int32))
    if settled:
        prefix = tl.zeros([1], KEY).sum(0)
        k_rem = kth - below
        for j in range(DIGITS):
            shift = (DIGITS - 1 - j) * 8
            hist = tl.zeros([256], tl.int32)
            for c0 in range(0, inside, CHUNK):
                i = c0 + tl.arange(0, CHUNK)
                held = i < inside
                key = tl.load(buffer_ptr + bh.to(tl.int64) * cap + i, mask=held, other=0.0).to(
                    KEY, bitcast=True
                )
                higher = key >> tl.minimum(shift + 8, DIGITS * 8 - 1)  # (j = 0: no higher digit)
                hist += tl.histogram(
                    ((key >> shift) & 255).to(tl.int32), 256, mask=held & ((j == 0) | (higher == prefix))
                )
            digit, k_rem = _pick_digit(hist, k_rem)
            prefix = (prefix << 8) | digit.to(KEY)
        tl.store(tau_ptr + bh, prefix.to(ACC, bitcast=True))


@_jit
def _fallback_kernel(
    q_ptr,
    k_ptr,
    log_s_ptr,
    stats_ptr,
    tau_ptr,
    settled_ptr,
    N,
    H,
    D,
    kth,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    HAS_LOG_S: tl.constexpr,
    ROUND_TO: tl.constexpr,
    F64: tl.constexpr,
    ROWS: tl.constexpr,
    KEYS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """tau of a head the bracket did not settle, exactly, by radix selection: per 8-bit digit of
    the float's bits, highest first, a 256-bin histogram of the recomputed entries whose higher
    digits match tau's (the entries are >= 0, so a float's bits order as the float does).  One
    program per head; a settled head returns at once."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    KEY: tl.constexpr = tl.int64 if F64 else tl.int32
    DIGITS: tl.constexpr = 8 if F64 else 4
    bh = tl.program_id(0)
    if tl.load(settled_ptr + bh) == 0:
        b, h = bh // H, bh % H
        q_ptr += b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        k_ptr += b.to(tl.int64) * skb + h.to(tl.int64) * skh
        stats = stats_ptr + bh.to(tl.int64) * 2 * N
        offs_d = tl.arange(0, BLOCK_D)
        prefix = tl.zeros([1], KEY).sum(0)
        k_rem = kth
        for j in range(DIGITS):  # a loop, not unrolled: one copy of the sweep's registers
            shift = (DIGITS - 1 - j) * 8
            hist = tl.zeros([256], tl.int32)
            for r0 in range(0, N, ROWS):
                rows = r0 + tl.arange(0, ROWS)
                q_tile = _q_tile(q_ptr, rows, N, sqn, offs_d, D)
                row_max = tl.load(stats + rows, mask=rows < N, other=0.0)
                row_sum = tl.load(stats + N + rows, mask=rows < N, other=1.0)
                for k0 in range(0, N, KEYS):
                    p, keys = _probs(
                        q_tile,
                        k_ptr,
                        log_s_ptr,
                        b,
                        k0,
                        N,
                        skn,
                        offs_d,
                        D,
                        row_max,
                        row_sum,
                        rows,
                        ROUND_TO,
                        HAS_LOG_S,
                        KEYS,
                        ACC,
                    )
                    key = tl.reshape(p.to(KEY, bitcast=True), [ROWS * KEYS])
                    inside = tl.reshape((rows < N)[:, None] & (keys < N)[None, :], [ROWS * KEYS])
                    higher = key >> tl.minimum(shift + 8, DIGITS * 8 - 1)  # (j = 0: no higher digit)
                    inside = inside & ((j == 0) | (higher == prefix))
                    hist += tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=inside)
            digit, k_rem = _pick_digit(hist, k_rem)
            prefix = (prefix << 8) | digit.to(KEY)
        tl.store(tau_ptr + bh, prefix.to(ACC, bitcast=True))


@_jit
def _output_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    log_s_ptr,
    stats_ptr,
    tau_ptr,
    out_ptr,
    colsum_ptr,
    diag_ptr,
    row0_ptr,
    N,
    H,
    D,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    son,
    count_tiles,
    HAS_LOG_S: tl.constexpr,
    HAS_TAU: tl.constexpr,
    ROUND_TO: tl.constexpr,
    F64: tl.constexpr,
    ROWS: tl.constexpr,
    KEYS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    bh, tile = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    q_ptr += b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr += b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_ptr += b.to(tl.int64) * svb + h.to(tl.int64) * svh
    rows = tile * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_tile = _q_tile(q_ptr, rows, N, sqn, offs_d, D)
    stats = stats_ptr + bh.to(tl.int64) * 2 * N
    row_max = tl.load(stats + rows, mask=rows < N, other=0.0)
    row_sum = tl.load(stats + N + rows, mask=rows < N, other=1.0)
    tau = 0.0
    if HAS_TAU:
        tau = tl.load(tau_ptr + bh).to(ACC)
    acc = tl.zeros([ROWS, BLOCK_D], ACC)
    diag = tl.zeros([ROWS], ACC)
    for k0 in range(0, N, KEYS):
        p, keys = _probs(
            q_tile,
            k_ptr,
            log_s_ptr,
            b,
            k0,
            N,
            skn,
            offs_d,
            D,
            row_max,
            row_sum,
            rows,
            ROUND_TO,
            HAS_LOG_S,
            KEYS,
            ACC,
        )
        if HAS_TAU:
            p = tl.where(p < tau, 0.0, p)  # entries below the head's threshold -> 0
        key_ok = keys < N
        v_tile = tl.load(
            v_ptr + keys.to(tl.int64)[:, None] * svn + offs_d[None, :],
            mask=key_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc += tl.dot(p.to(v_tile.dtype), v_tile, input_precision="ieee", out_dtype=ACC)
        tl.store(colsum_ptr + (bh.to(tl.int64) * count_tiles + tile) * N + keys, tl.sum(p, 0), mask=key_ok)
        diag += tl.sum(tl.where(rows[:, None] == keys[None, :], p, 0.0), 1)
        if tile == 0:
            tl.store(
                row0_ptr + bh.to(tl.int64) * N + keys,
                tl.sum(tl.where((rows == 0)[:, None], p, 0.0), 0),
                mask=key_ok,
            )
    tl.store(diag_ptr + bh.to(tl.int64) * N + rows, diag, mask=rows < N)
    tl.store(
        out_ptr
        + b.to(tl.int64) * sob
        + h.to(tl.int64) * soh
        + rows.to(tl.int64)[:, None] * son
        + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows < N)[:, None] & d_ok[None, :],
    )


# Triton decides when a kernel is defined (at import) whether it is compiled for the GPU or run by
# its interpreter on CPU tensors (TRITON_INTERPRET=1); the fast backend asks which.  The kernel's
# own type says so in every Triton version.
INTERPRETED = type(_stats_kernel).__name__ == "InterpretedFunction"
