"""Triton kernels of the fast backend's fused attention path (``gtp_ref.backends.fast.attend_and_score``).

Imported only where Triton is present.  ``gtp_attention`` is a GTP block's whole attention in one
kernel per image and head, for N <= 256 (its docstring says how).  Above that, two kernels
around a ``topk`` threshold: ``softmax_rows`` computes GTP's attention map -- the scaled logits
plus log s through a row softmax -- and ``mask_and_reduce`` masks it below the sparsity
threshold, casts it for ``Att v`` and sums the columns and the diagonal the scores need, one
pass each.  ``TRITON_INTERPRET=1`` (set before this module is imported) runs them on CPU
tensors, which is how the test suite checks them without a GPU.

Standalone selection kernels over a stored map (sampled bracket, radix and Floyd-Rivest k-th
value selection) lost to ``torch.topk`` on an H100: ``git show 8a087a5:gtp_ref/_triton.py``
has them.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_kernel(logits_ptr, log_s_ptr, out_ptr, num_rows, N, H, HAS_LOG_S: tl.constexpr,
                    F64: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # rows of the [B*H*N, N] logits
    cols = tl.arange(0, BLOCK_N)
    m = (rows < num_rows)[:, None] & (cols < N)[None, :]
    off = rows.to(tl.int64)[:, None] * N + cols[None, :]
    z = tl.load(logits_ptr + off, mask=m, other=0.0).to(tl.float64 if F64 else tl.float32)
    if HAS_LOG_S:
        image = rows // (H * N)
        z = z + tl.load(log_s_ptr + image.to(tl.int64)[:, None] * N + cols[None, :], mask=m, other=0.0)
    z = tl.where((cols < N)[None, :], z, float("-inf"))  # rows past the end stay finite (0): no NaN
    e = tl.exp(z - tl.max(z, 1)[:, None])
    p = e / tl.sum(e, 1)[:, None]
    tl.store(out_ptr + off, p.to(out_ptr.dtype.element_ty), mask=m)


def softmax_rows(logits, log_s=None, out_dtype=torch.float32):
    """softmax(logits + log s) over the last dimension: logits [B, H, N, N] (already scaled),
    log_s [B, N].  Computed in float64 when logits or out_dtype are float64, else in float32;
    written in out_dtype.
    """
    B, H, N, _ = logits.shape
    f64 = torch.float64 in (logits.dtype, out_dtype)
    logits = logits.contiguous()
    out = torch.empty(logits.shape, dtype=out_dtype, device=logits.device)
    block_n = triton.next_power_of_2(N)
    rows_per_program = max(1, 2048 // block_n)
    num_rows = B * H * N
    has_log_s = log_s is not None
    log_s = log_s.to(torch.float64 if f64 else torch.float32).contiguous() if has_log_s else logits
    grid = (triton.cdiv(num_rows, rows_per_program),)
    _softmax_kernel[grid](logits, log_s, out, num_rows, N, H, HAS_LOG_S=has_log_s, F64=f64,
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


# Triton decides when a kernel is defined (at import) whether it is compiled for the GPU or run by
# its interpreter on CPU tensors (TRITON_INTERPRET=1); the fast backend asks which.  The kernel's
# own type says so in every Triton version (``triton.knobs`` exists only in recent ones).
INTERPRETED = type(_softmax_kernel).__name__ == "InterpretedFunction"


# ---- the whole attention of a GTP block in one kernel, one program per image and head ---------------
@triton.jit
def _logits(q_ptr, k_tile, log_s, rows, offs_d, N, D, sqn, ROUND_TO: tl.constexpr, HAS_LOG_S: tl.constexpr,
            col_ok, ACC: tl.constexpr):
    """z = q_rows k^T (+ log s) for a tile of rows, in ACC (float32, or float64 for float64 inputs),
    with the reference's rounding steps: the product rounded to q's dtype (autocast's matmul
    output), then log s added."""
    q = tl.load(q_ptr + rows[:, None] * sqn + offs_d[None, :], mask=(rows < N)[:, None] & (offs_d < D)[None, :],
                other=0.0)
    z = tl.dot(q, tl.trans(k_tile), input_precision="ieee", out_dtype=ACC)  # (BLOCK_M, BLOCK_N)
    if ROUND_TO:
        z = z.to(q_ptr.dtype.element_ty)
    z = z.to(ACC)
    if HAS_LOG_S:
        z = z + log_s[None, :]
    return tl.where(col_ok[None, :], z, float("-inf"))


@triton.jit
def _probs(q_ptr, k_tile, log_s, stats_ptr, m0, offs_d, offs_n, N, D, sqn, ROUND_TO: tl.constexpr,
           HAS_LOG_S: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
    """Rows m0..m0+BLOCK_M of the softmax map, recomputed: exp(z - max) / sum with the stored
    row statistics; 0 outside the map."""
    rows = m0 + tl.arange(0, BLOCK_M)
    col_ok = offs_n < N
    z = _logits(q_ptr, k_tile, log_s, rows, offs_d, N, D, sqn, ROUND_TO, HAS_LOG_S, col_ok, ACC)
    row_max = tl.load(stats_ptr + rows, mask=rows < N, other=0.0)
    row_sum = tl.load(stats_ptr + N + rows, mask=rows < N, other=1.0)
    p = tl.exp(z - row_max[:, None]) / row_sum[:, None]
    return tl.where((rows < N)[:, None] & col_ok[None, :], p, 0.0), rows


@triton.jit
def _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, prefix, k_rem,
                    DONE: tl.constexpr, BITS: tl.constexpr, ROUND_TO: tl.constexpr, HAS_LOG_S: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, KEY: tl.constexpr):
    """One digit of the k-th smallest entry of the head's map: a histogram of the BITS bits after
    the DONE bits fixed in ``prefix``, over every entry (the map recomputed tile by tile).  The
    entries are >= 0, so a float's bits order as the float does (KEY: their integer type)."""
    SHIFT: tl.constexpr = KEY.primitive_bitwidth - DONE - BITS
    NBINS: tl.constexpr = 1 << BITS
    hist = tl.zeros([NBINS], dtype=tl.int32)
    for m0 in range(0, N, BLOCK_M):
        p, rows = _probs(q_ptr, k_tile, log_s, stats_ptr, m0, offs_d, offs_n, N, D, sqn, ROUND_TO, HAS_LOG_S,
                         BLOCK_M, ACC)
        key = tl.reshape(p.to(KEY, bitcast=True), [BLOCK_M * BLOCK_N])
        inside = tl.reshape((rows < N)[:, None] & (offs_n < N)[None, :], [BLOCK_M * BLOCK_N])
        if DONE > 0:
            inside = inside & ((key >> (SHIFT + BITS)) == prefix)
        hist += tl.histogram(((key >> SHIFT) & (NBINS - 1)).to(tl.int32), NBINS, mask=inside)
    cum = tl.cumsum(hist, 0)
    digit = tl.sum((cum < k_rem).to(tl.int32), 0)  # the first bin whose cumulative count reaches k
    before = tl.sum(tl.where(tl.arange(0, NBINS) < digit, hist, 0), 0)
    return (prefix << BITS) | digit.to(KEY), k_rem - before


@triton.jit
def _gtp_attention_kernel(q_ptr, k_ptr, v_ptr, log_s_ptr, out_ptr, colsum_ptr, diag_ptr, row0_ptr, stats_ptr,
                          N, H, D, kth, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                          HAS_LOG_S: tl.constexpr, HAS_TAU: tl.constexpr, ROUND_TO: tl.constexpr,
                          F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    KEY: tl.constexpr = tl.int64 if F64 else tl.int32
    pid = tl.program_id(0)
    b, h = pid // H, pid % H
    q_ptr += b * sqb + h * sqh
    k_ptr += b * skb + h * skh
    v_ptr += b * svb + h * svh
    stats_ptr += pid.to(tl.int64) * 2 * N
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    col_ok, d_ok = offs_n < N, offs_d < D
    k_tile = tl.load(k_ptr + offs_n[:, None] * skn + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_LOG_S:
        log_s = tl.load(log_s_ptr + b * N + offs_n, mask=col_ok, other=0.0).to(ACC)
    else:
        log_s = tl.zeros([BLOCK_N], ACC)

    # 1. the row statistics of the softmax (max, sum of exponentials)
    for m0 in range(0, N, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        z = _logits(q_ptr, k_tile, log_s, rows, offs_d, N, D, sqn, ROUND_TO, HAS_LOG_S, col_ok, ACC)
        row_max = tl.max(z, 1)
        row_sum = tl.sum(tl.exp(z - row_max[:, None]), 1)
        tl.store(stats_ptr + rows, row_max, mask=rows < N)
        tl.store(stats_ptr + N + rows, row_sum, mask=rows < N)
    tl.debug_barrier()

    # 2. the threshold tau: the exact kth smallest of the head's N^2 entries, by radix passes over
    #    their bits (11 + 11 + 10 of a float32; 5 x 11 + 9 of a float64), the map recomputed each
    #    time instead of stored
    tau = 0.0
    if HAS_TAU:
        key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, 0, kth,
                                     0, 11, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
        key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                     11, 11, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
        if F64:
            key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                         22, 11, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
            key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                         33, 11, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
            key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                         44, 11, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
            key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                         55, 9, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
        else:
            key, k_rem = _map_radix_pass(q_ptr, k_tile, log_s, stats_ptr, offs_d, offs_n, N, D, sqn, key, k_rem,
                                         22, 10, ROUND_TO, HAS_LOG_S, BLOCK_M, BLOCK_N, ACC, KEY)
        tau = key.to(ACC, bitcast=True)

    # 3. the masked map: Att v, its column sums, its diagonal, its first row
    v_tile = tl.load(v_ptr + offs_n[:, None] * svn + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    col_sum = tl.zeros([BLOCK_N], dtype=ACC)
    diag = tl.zeros([BLOCK_N], dtype=ACC)
    for m0 in range(0, N, BLOCK_M):
        p, rows = _probs(q_ptr, k_tile, log_s, stats_ptr, m0, offs_d, offs_n, N, D, sqn, ROUND_TO, HAS_LOG_S,
                         BLOCK_M, ACC)
        if HAS_TAU:
            p = tl.where(p < tau, 0.0, p)  # entries below tau -> 0
        out = tl.dot(p.to(v_ptr.dtype.element_ty), v_tile, input_precision="ieee", out_dtype=ACC)  # (BLOCK_M, BLOCK_D)
        tl.store(out_ptr + b * sob + h * soh + rows[:, None] * son + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=(rows < N)[:, None] & d_ok[None, :])
        col_sum += tl.sum(p, 0)
        diag += tl.sum(tl.where(rows[:, None] == offs_n[None, :], p, 0.0), 0)
        if m0 == 0:
            first = tl.sum(tl.where((rows == 0)[:, None], p, 0.0), 0)
            tl.store(row0_ptr + pid.to(tl.int64) * N + offs_n, first, mask=col_ok)
    tl.store(colsum_ptr + pid.to(tl.int64) * N + offs_n, col_sum, mask=col_ok)
    tl.store(diag_ptr + pid.to(tl.int64) * N + offs_n, diag, mask=col_ok)


MAX_ONE_KERNEL_TOKENS = 256  # the whole row of keys (and of values) of a head in one tile


def gtp_attention(q, k, v, log_s=None, kth=0):
    """A GTP block's attention for one program per image and head, no N x N tensor in memory.

    q (already scaled), k, v [B, H, N, d] (views of the qkv projection are fine), log_s [B, N] or
    None, kth = int(N^2 (1 - theta)) (0: no sparsity) -> (out [B, N, H, d] in v's dtype: Att v
    with Att's entries below the kth smallest of its head zeroed; col_sums, diagonal, first_row
    [B, H, N] of that masked map, float32 -- float64 for float64 inputs).  The map --
    softmax(q k^T + log s) in float32 (float64), the product rounded to q's dtype first as
    autocast's matmul does -- is recomputed for each pass (row statistics, the radix passes for
    the threshold, the output) instead of being stored.  N <= 256.
    """
    B, H, N, d = q.shape
    if N > MAX_ONE_KERNEL_TOKENS:
        raise ValueError(f"gtp_attention takes N <= {MAX_ONE_KERNEL_TOKENS}, got N={N}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("gtp_attention needs q, k, v with a unit stride along the head dimension")
    f64 = q.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    out = torch.empty(B, N, H, d, dtype=v.dtype, device=v.device)
    col_sums = torch.empty(B, H, N, dtype=acc, device=q.device)
    diag, first_row = torch.empty_like(col_sums), torch.empty_like(col_sums)
    stats = torch.empty(B * H, 2, N, dtype=acc, device=q.device)
    block_n = max(16, triton.next_power_of_2(N))
    block_m = max(16, min(64, (4096 if f64 else 8192) // block_n))
    has_log_s = log_s is not None
    log_s = log_s.to(acc).contiguous() if has_log_s else stats
    _gtp_attention_kernel[(B * H,)](
        q, k, v, log_s, out, col_sums, diag, first_row, stats, N, H, d, kth,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
        HAS_LOG_S=has_log_s, HAS_TAU=kth > 0, ROUND_TO=q.dtype not in (torch.float32, torch.float64), F64=f64,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=8)
    return out, col_sums, diag, first_row
