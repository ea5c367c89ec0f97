"""Triton kernels of the fast backend's fused attention path (``gtp_ref.fast.attend_and_score``).

Imported only where Triton is present.  ``softmax_rows`` computes GTP's attention map -- the
scaled logits plus log s through a row softmax, with the reference's rounding steps -- and
``mask_and_reduce`` masks it below the sparsity threshold, casts it for ``Att v`` and sums the
columns and the diagonal the scores need, one pass each.  ``TRITON_INTERPRET=1`` (set before
this module is imported) runs them on CPU tensors, which is how the test suite checks them
without a GPU.

Selection kernels (sampled bracket, radix and Floyd-Rivest k-th value selection) and a one-kernel
q k^T + softmax were tried here and lost to ``torch.topk`` or were never timed on a GPU:
``git show 8a087a5:gtp_ref/_triton.py`` has them.
"""
import torch
import triton
import triton.language as tl


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


# Triton decides when a kernel is defined (at import) whether it is compiled for the GPU or run by
# its interpreter on CPU tensors (TRITON_INTERPRET=1); the fast backend asks which.  The kernel's
# own type says so in every Triton version (``triton.knobs`` exists only in recent ones).
INTERPRETED = type(_softmax_kernel).__name__ == "InterpretedFunction"
