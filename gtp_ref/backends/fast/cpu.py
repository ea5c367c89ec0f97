"""The fast backend's CPU kernels: ``cpu_kernels.c`` compiled with the system's C
compiler and called through ctypes.  ``kth_smallest_rows``: the exact k-th smallest of every row
in two streaming passes (``cpu_kernels.c`` says how), against a sort-like ``torch.topk`` /
``kthvalue``; ``mask_heads``: per head, that threshold, then the masked map with its column
sums, diagonal and first row in one more pass while the head's map is in cache;
``attention_op``: a GTP block's whole attention per image and head -- q k^T, the softmax, the
threshold, the masking, what the selection reads and Att v -- with the head's map in the cache of
the core that computes it from the first product to the last.

The library is built on first use and loaded only when trusted and intact
(``gtp_ref.backends.fast.cpu_build`` says how).
Any failure (no C compiler, a build error, a failed load or self-test) ends in ``REASON``, one
warning, and torch ops on the CPU instead (``torch.topk`` for the threshold) -- the same values,
more slowly; never a crash or a wrong number.  The functions are torch custom ops, so
``torch.compile`` sees one op each and keeps the whole model in one graph.
"""
import ctypes
import warnings
from typing import Any

import torch
from torch import Tensor

from gtp_ref.backends.fast import cpu_build

_LIB: ctypes.CDLL | None = None
REASON: str | None = None  # why the compiled kernels are not available, once that is known


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on the first call).  Any failure --
    no compiler, a build error, a library that does not load or fails its self-test -- ends in
    a warning and False: the fast backend then uses torch ops on the CPU, with the same values."""
    global _LIB, REASON
    if _LIB is None and REASON is None:
        try:
            _LIB = cpu_build.load()
        except Exception as e:  # noqa: BLE001 -- every failure falls back to torch, never crashes
            REASON = str(e) or type(e).__name__
            warnings.warn(f"gtp_ref.backends.fast: the compiled CPU kernels are not available ({REASON}); on the CPU "
                          "the fast backend uses torch ops instead: torch.topk for the threshold, the explicit "
                          "attention (the same values, slower)", stacklevel=3)
    return _LIB is not None


def _function(name: str, dtype: torch.dtype) -> Any:
    """The compiled library's function ``name`` for float32 / float64 (building the library first)."""
    if not available():
        raise RuntimeError(f"the compiled CPU kernels are not available: {REASON}")
    return getattr(_LIB, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _pointer(t: Tensor | None) -> Any:
    """A tensor's data as the C function's float* / double* (None: NULL)."""
    if t is None:
        return None
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float if t.dtype == torch.float32 else ctypes.c_double))


def _call(name: str, *tensors: Tensor, ints: tuple[int, ...], outputs: tuple[Tensor, ...]) -> None:
    """<name>_<dtype>(tensors..., ints..., outputs..., threads) on contiguous CPU tensors."""
    _function(name, tensors[0].dtype)(*map(_pointer, tensors), *ints, *map(_pointer, outputs), torch.get_num_threads())


@torch.library.custom_op("gtp_ref::kth_smallest_rows", mutates_args=())
def kth_smallest_rows(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of every row of a CPU float32 / float64 [R, L] tensor -> [R]."""
    rows = rows.contiguous()
    out = rows.new_empty(rows.shape[:1])
    if rows.shape[0]:
        _call("kth_smallest", rows, ints=(rows.shape[0], rows.shape[1], k), outputs=(out,))
    return out


@kth_smallest_rows.register_fake
def _(rows: Tensor, k: int) -> Tensor:
    return rows.new_empty(rows.shape[:1])


@torch.library.custom_op("gtp_ref::mask_heads", mutates_args=())
def mask_heads(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GTP's sparsified map and the selection's inputs, per head, in one call: attn [B, H, N, N]
    (CPU float32 / float64) and k (the threshold's rank in the head's N^2 entries; 0: none) ->
    (masked map [B, H, N, N] with the entries below the head's k-th smallest set to 0, its column
    sums, diagonal and first row [B, H, N], the thresholds [B, H] (-inf for k = 0)).  Gradients
    flow to the kept entries, as through the reference's masked_fill."""
    attn = attn.contiguous()
    B, H, N, _ = attn.shape
    masked, col_sums, diagonal, first_row = torch.empty_like(attn), *(attn.new_empty(B, H, N) for _ in range(3))
    tau = attn.new_empty(B, H)
    if B * H:
        _call("mask_heads", attn, ints=(B * H, N, k), outputs=(masked, col_sums, diagonal, first_row, tau))
    return masked, col_sums, diagonal, first_row, tau


@mask_heads.register_fake
def _(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, H, N, _ = attn.shape
    return torch.empty_like(attn), *(attn.new_empty(B, H, N) for _ in range(3)), attn.new_empty(B, H)


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output[4])


def _backward(ctx, g_masked, g_col_sums, g_diagonal, g_first_row, g_tau):
    attn, tau = ctx.saved_tensors
    g = g_masked + g_col_sums[:, :, None, :]  # (B, H, N, N)
    g = g + torch.diag_embed(g_diagonal)
    g[:, :, 0, :] += g_first_row
    return g.masked_fill(attn < tau[..., None, None], 0.0), None  # the threshold passes no gradient


mask_heads.register_autograd(_backward, setup_context=_save)


@torch.library.custom_op("gtp_ref::cpu_attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, log_s: Tensor | None, kth: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A GTP block's attention on the CPU in one call: q (scaled), k [B, H, N, d], v [B, H, N, dv]
    (float32 / float64, any strides with unit stride along the last dimension), log s [B, N] or
    None, kth = the threshold's rank among a head's N^2 entries (0: none) -> (Att v [B, N, H, dv]
    with each head's entries below its kth smallest set to 0; that map's column sums, diagonal
    and first row [B, H, N];
    the thresholds [B, H], -inf for kth = 0).  Gradients are those of the same computation in
    torch ops, recomputed in the backward pass (the threshold passes none, as through the
    reference's masked_fill)."""
    B, H, N, d = q.shape
    dv = v.shape[-1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    log_s = None if log_s is None else log_s.to(q.dtype).contiguous()
    out = q.new_empty(B, N, H, dv)
    col_sums, diagonal, first_row = (q.new_empty(B, H, N) for _ in range(3))
    tau = q.new_full((B, H), float("-inf"))
    if B * H and N:
        strides = (ctypes.c_int64 * 9)(*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
        failed = _function("attention", q.dtype)(*map(_pointer, (q, k, v, log_s)), strides, B, H, N, d, dv, kth,
                                                 *map(_pointer, (out, col_sums, diagonal, first_row, tau)),
                                                 torch.get_num_threads())
        if failed:
            raise MemoryError(f"the compiled CPU attention found no memory for {failed} of {B * H} heads' maps "
                              f"({N} x {N})")
    return out, col_sums, diagonal, first_row, tau


@attention_op.register_fake
def _(q, k, v, log_s, kth):
    B, H, N, _ = q.shape
    return q.new_empty(B, N, H, v.shape[-1]), *(q.new_empty(B, H, N) for _ in range(3)), q.new_empty(B, H)


def _save_attention(ctx, inputs, output) -> None:
    q, k, v, log_s, kth = inputs
    ctx.has_log_s, ctx.kth = log_s is not None, kth
    ctx.save_for_backward(q, k, v, log_s if log_s is not None else q.new_empty(0))


def _attention_backward(ctx, *grads: Tensor):
    """The gradients of the same attention in torch ops, recomputed; the map masked below its kth
    smallest entry as torch computes it (the kernel's threshold may differ from it in the last
    bit, which would drop the threshold's own entry)."""
    q, k, v, log_s = ctx.saved_tensors
    inputs = [t.detach().requires_grad_() for t in (q, k, v, *([log_s] if ctx.has_log_s else []))]
    with torch.enable_grad():
        z = inputs[0] @ inputs[1].transpose(-2, -1)  # (B, H, N, N)
        if ctx.has_log_s:
            z = z + inputs[3][:, None, None, :]
        p = z.softmax(-1)  # (B, H, N, N)
        if ctx.kth:
            B, H, N, _ = p.shape
            tau = p.detach().reshape(B, H, N * N).kthvalue(ctx.kth, dim=-1).values  # (B, H)
            p = p.masked_fill(p < tau[..., None, None], 0.0)
        outputs = ((p @ inputs[2]).transpose(1, 2), p.sum(2), p.diagonal(dim1=-2, dim2=-1), p[:, :, 0])
        used = [(o, g) for o, g in zip(outputs, grads[:4]) if g is not None]
        got = torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], allow_unused=True)
    return (*got[:3], got[3] if ctx.has_log_s else None, None)


attention_op.register_autograd(_attention_backward, setup_context=_save_attention)
