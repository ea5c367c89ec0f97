"""The fast backend's CPU kernels: ``cpu_kernels.c`` compiled with the system's C
compiler and called through ctypes.  ``kth_smallest_rows``: the exact k-th smallest of every row
in two streaming passes (``cpu_kernels.c`` says how), against a sort-like ``torch.topk`` /
``kthvalue``; ``mask_heads``: per head, that threshold, then the masked map with its column
sums, diagonal and first row in one more pass while the head's map is in cache;
``attention_op``: a GTP block's whole attention per image and head -- q k^T (+ a relative-position
bias), the softmax, the threshold, the masking, what the selection reads and Att v -- with the
head's map in the cache of the core that computes it from the first product to the last, in
float32 / float64, and for bfloat16 / float16 inputs with a float32 map; ``select_tokens``: GTP's selection
without a sort; ``propagate``: the propagation by the graph -- the kept tokens' new features,
sizes and graph rows in one pass, with the check that kept and propagated tokens partition the
image tokens -- where torch ops take some thirty small calls.

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

from gtp_ref._checks import check_partition, check_tensor, check_token_sizes
from gtp_ref.attention import softmax_map
from gtp_ref.backends.fast import cpu_build
from gtp_ref.backends.fast.cpu_build import (
    BAD_ARGUMENTS,
    BAD_LOG_SIZE,
    BAD_SIZE,
    GRAPH_ROW,
    PARTITION_ERROR,
    SELECT_MAX,
)
from gtp_ref.validate import integer, real

_LIB: ctypes.CDLL | None = None
REASON: str | None = None  # why the compiled kernels are not available, once that is known


# torch.compile runs it once while tracing and takes its answer as a constant (the first call
# may build the library, which it cannot trace)
@torch.compiler.assume_constant_result
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
            warnings.warn(
                f"gtp_ref.backends.fast: the compiled CPU kernels are not available ({REASON}); on the CPU "
                "the fast backend uses torch ops instead: torch.topk for the threshold, the explicit "
                "attention (the same values, slower)",
                stacklevel=3,
            )
    return _LIB is not None


def _library() -> ctypes.CDLL:
    """The compiled library (building it first); RuntimeError where it is not available."""
    if not available():
        raise RuntimeError(f"the compiled CPU kernels are not available: {REASON}")
    return _LIB


def _function(name: str, dtype: torch.dtype) -> Any:
    """The compiled library's function ``name`` for float32 / float64 (building the library first)."""
    return getattr(_library(), f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _pointer(t: Tensor | None) -> Any:
    """A tensor's data as the C function's pointer argument: its address (None: NULL)."""
    return None if t is None else t.data_ptr()


def _call(name: str, *tensors: Tensor | None, ints: tuple[Any, ...], outputs: tuple[Tensor, ...]) -> Any:
    """<name>_<dtype>(tensors..., ints..., outputs..., threads) on CPU tensors (None: NULL), the
    dtype the first tensor's; what the C function returns."""
    return _function(name, tensors[0].dtype)(
        *map(_pointer, tensors), *ints, *map(_pointer, outputs), torch.get_num_threads()
    )


# ---- the arguments: every shape, dtype and rank checked before C sees a pointer ----------------
def _cpu_float(name: str, t: Tensor, ndim: int, dtype: torch.dtype | None = None) -> Tensor:
    """t: a CPU float32 / float64 tensor of ``ndim`` dimensions (of ``dtype`` where given)."""
    check_tensor(name, t, ndim, floating=True)
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be a CPU float32 / float64 tensor, got {t.dtype} on {t.device.type}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}; the other inputs have {dtype}")
    return t


def _cpu_index(name: str, t: Tensor, shape: tuple[int | None, ...]) -> Tensor:
    """t: a CPU integer tensor of ``shape`` (None = any size)."""
    check_tensor(name, t, len(shape), floating=False, shape=shape)
    if t.device.type != "cpu":
        raise TypeError(f"{name} must be a CPU tensor, got one on {t.device.type}")
    return t


def _refused(function: str, status: int) -> None:
    """A C function's refusal that the checks above should have made first: a bug, said so."""
    if status == BAD_ARGUMENTS:
        raise ValueError(f"the compiled {function} refused its arguments (sizes or ranks out of range)")


def _check_kth(rows: Tensor, k: int) -> int:
    _cpu_float("rows", rows, 2)
    if rows.shape[1] == 0:
        raise ValueError(f"rows has shape {list(rows.shape)}: no k-th smallest of an empty row")
    return integer("k", k, 1, rows.shape[1])


@torch.library.custom_op("gtp_ref::kth_smallest_rows", mutates_args=())
def kth_smallest_rows(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of every row of a CPU float32 / float64 [R, L] tensor -> [R]
    (1 <= k <= L)."""
    k = _check_kth(rows, k)
    rows = rows.contiguous()
    out = rows.new_empty(rows.shape[:1])
    if rows.shape[0]:
        failed = _call("kth_smallest", rows, ints=(rows.shape[0], rows.shape[1], k), outputs=(out,))
        _refused("selection", failed)
        if failed:
            raise MemoryError(
                f"the compiled CPU selection found no memory for {failed} of {rows.shape[0]} rows"
            )
    return out


@kth_smallest_rows.register_fake
def _(rows: Tensor, k: int) -> Tensor:
    _check_kth(rows, k)
    return rows.new_empty(rows.shape[:1])


@torch.library.custom_op("gtp_ref::mask_heads", mutates_args=())
def mask_heads(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GTP's sparsified map and the selection's inputs, per head, in one call: attn [B, H, N, N]
    (CPU float32 / float64) and k (the threshold's rank in the head's N^2 entries; 0: none) ->
    (masked map [B, H, N, N] with the entries below the head's k-th smallest set to 0, its column
    sums, diagonal and first row [B, H, N], the thresholds [B, H] (-inf for k = 0)).  Gradients
    flow to the kept entries, as through the reference's masked_fill."""
    k = _check_mask(attn, k)
    attn = attn.contiguous()
    B, H, N, _ = attn.shape
    masked, col_sums, diagonal, first_row = (
        torch.empty_like(attn),
        *(attn.new_empty(B, H, N) for _ in range(3)),
    )
    tau = attn.new_full((B, H), float("-inf"))
    if attn.numel():
        failed = _call(
            "mask_heads", attn, ints=(B * H, N, k), outputs=(masked, col_sums, diagonal, first_row, tau)
        )
        _refused("masking", failed)
        if failed:
            raise MemoryError(f"the compiled CPU masking found no memory for {failed} of {B * H} heads")
    return masked, col_sums, diagonal, first_row, tau


def _check_mask(attn: Tensor, k: int) -> int:
    _cpu_float("attn", attn, 4)
    N = attn.shape[-1]
    if attn.shape[-2] != N:
        raise ValueError(f"attn must be [B, H, N, N] (square maps), got shape {list(attn.shape)}")
    return integer("k", k, 0, N * N)


@mask_heads.register_fake
def _(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_mask(attn, k)
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


# The fused attention's input dtypes, each with the dtype it computes in (and returns the map's
# reductions in): bfloat16 / float16 inputs give a float32 map (docs/spec.md, "Reduced precision").
ATTENTION_DTYPES = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}
_ATTENTION_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_s: Tensor | None,
    kth: int,
    bias: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A GTP block's attention on the CPU in one call: q, k [B, H, N, d], v [B, H, N, dv]
    (float32 / float64 / bfloat16 / float16, one dtype; any strides with unit stride along the
    last dimension), log s [B, N] (finite) or None, kth = the threshold's rank among a head's N^2
    entries (0: none), a relative-position bias [B or 1, H, N, N] or None, the attention scale
    (q multiplied by it as ``q * scale`` in torch: in q's dtype) -> (Att v [B, N, H, dv] with each
    head's entries below its kth smallest set to 0, in q's dtype; that map's column sums,
    diagonal and first row [B, H, N]; the thresholds [B, H], -inf for kth = 0 -- these in the
    map's dtype, ``ATTENTION_DTYPES[q.dtype]``).  bfloat16 / float16: q k^T rounded to q's
    dtype, then the map in float32, rounded to q's dtype for Att v (docs/spec.md, "Reduced
    precision").  ``attention_op`` is this function as a torch custom op (for torch.compile and
    autograd: its gradients are those of the same computation in torch ops, recomputed in the
    backward pass; the threshold passes none, as through the reference's masked_fill)."""
    return run_attention(q, k, v, log_s, _check_attention(q, k, v, log_s, kth, bias, scale), bias, scale)


def run_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_s: Tensor | None,
    kth: int,
    bias: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``attention`` for arguments already checked as ``attention`` checks them (``ops.attention``
    checks its own, from which these follow): the call itself.  The C function checks again what
    it can see -- sizes, ranks, that every log s is finite -- before it writes anything."""
    B, H, N, d = q.shape
    dv, acc = v.shape[-1], ATTENTION_DTYPES[q.dtype]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    log_s = None if log_s is None else log_s.to(acc).contiguous()
    if bias is not None:
        bias = bias.to(acc)
        bias = bias if bias.stride(-1) == 1 else bias.contiguous()
    out = q.new_empty(B, N, H, dv)
    col_sums, diagonal, first_row = (q.new_empty(B, H, N, dtype=acc) for _ in range(3))
    tau = q.new_full((B, H), float("-inf"), dtype=acc)
    if B * H and N:
        bias_strides = (
            (0, 0, 0) if bias is None else (bias.stride(0) if bias.shape[0] > 1 else 0, *bias.stride()[1:3])
        )
        strides = (ctypes.c_int64 * 12)(*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *bias_strides)
        function = getattr(_library(), f"attention_{_ATTENTION_NAMES[q.dtype]}")
        failed = function(
            *map(_pointer, (q, k, v, log_s, bias)),
            strides,
            B,
            H,
            N,
            d,
            dv,
            kth,
            scale,
            *map(_pointer, (out, col_sums, diagonal, first_row, tau)),
            torch.get_num_threads(),
        )
        _refused("attention", failed)
        if failed == BAD_LOG_SIZE:
            b, j = (~log_s.isfinite()).nonzero()[0].tolist()
            raise ValueError(
                f"log_s[{b}, {j}] = {float(log_s[b, j])}: the log of a token size must be finite "
                "(token sizes finite and > 0)"
            )
        if failed:
            raise MemoryError(
                f"the compiled CPU attention found no memory for {failed} of {B * H} heads' maps ({N} x {N})"
            )
    return out, col_sums, diagonal, first_row, tau


attention_op = torch.library.custom_op("gtp_ref::cpu_attention", attention, mutates_args=())


def _check_attention(
    q: Tensor, k: Tensor, v: Tensor, log_s: Tensor | None, kth: int, bias: Tensor | None, scale: float
) -> int:
    """q, k [B, H, N, d] and v [B, H, N, dv] of one CPU dtype of ``ATTENTION_DTYPES``, log s [B, N]
    or None, a bias [B or 1, H, N, N] or None, a finite scale, and 0 <= kth <= N^2."""
    real("scale", scale)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, floating=True)
        if t.device.type != "cpu" or t.dtype not in ATTENTION_DTYPES:
            raise TypeError(
                f"{name} must be a CPU float32 / float64 / bfloat16 / float16 tensor, got {t.dtype} on "
                f"{t.device.type}"
            )
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}; q has {q.dtype}")
    B, H, N, d = q.shape
    check_tensor("k", k, 4, shape=(B, H, N, d))
    check_tensor("v", v, 4, shape=(B, H, N, None))
    for name, t, shape in (("log_s", log_s, (B, N)), ("bias", bias, (None, H, N, N))):
        if t is None:
            continue
        check_tensor(name, t, len(shape), floating=True, shape=shape)
        if t.device.type != "cpu":
            raise TypeError(f"{name} must be a CPU tensor, got one on {t.device.type}")
    if bias is not None and bias.shape[0] not in (1, B):
        raise ValueError(f"bias has shape {list(bias.shape)}: its first dimension must be 1 or B = {B}")
    return integer("kth", kth, 0, N * N)


@attention_op.register_fake
def _(q, k, v, log_s, kth, bias=None, scale=1.0):
    _check_attention(q, k, v, log_s, kth, bias, scale)
    B, H, N, _ = q.shape
    acc = ATTENTION_DTYPES[q.dtype]
    return (
        q.new_empty(B, N, H, v.shape[-1]),
        *(q.new_empty(B, H, N, dtype=acc) for _ in range(3)),
        q.new_empty(B, H, dtype=acc),
    )


def convert(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The attention kernel's own conversions (for tests): float32 x -> (x in ``dtype``, bfloat16
    or float16, rounded to nearest even by the kernel; that back in float32, by the kernel)."""
    check_tensor("x", x, x.dim(), floating=True)
    if x.dtype != torch.float32 or x.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"convert takes a CPU float32 x and bfloat16 / float16, got {x.dtype} -> {dtype}")
    x = x.contiguous()
    bits, back = torch.empty(x.shape, dtype=dtype), torch.empty_like(x)
    getattr(_library(), f"convert_{_ATTENTION_NAMES[dtype]}")(
        x.data_ptr(), x.numel(), bits.data_ptr(), back.data_ptr()
    )
    return bits, back


def _save_attention(ctx, inputs, output) -> None:
    q, k, v, log_s, kth, bias, scale = inputs
    ctx.has_log_s, ctx.has_bias, ctx.kth, ctx.scale = log_s is not None, bias is not None, kth, scale
    empty = q.new_empty(0)
    ctx.save_for_backward(q, k, v, log_s if log_s is not None else empty, bias if bias is not None else empty)


def _attention_backward(ctx, *grads: Tensor):
    """The gradients of the same attention in torch ops, recomputed: the map by
    ``gtp_ref.attention.softmax_map`` (its rule for every dtype), masked below its kth smallest
    entry as torch computes it (the kernel's threshold may differ from it in the last bit, which
    would drop the threshold's own entry), and Att v as ``ValueMix`` reads it."""
    q, k, v, log_s, bias = (t.detach().requires_grad_() for t in ctx.saved_tensors)
    log_s, bias = (log_s if ctx.has_log_s else None), (bias if ctx.has_bias else None)
    inputs = [t for t in (q, k, v, log_s, bias) if t is not None]
    with torch.enable_grad():
        extra = bias  # + log s per key column, as the map adds it after the bias
        if log_s is not None:
            extra = log_s[:, None, None, :] if extra is None else extra + log_s[:, None, None, :]
        p = softmax_map(q * ctx.scale, k, None, extra)  # (B, H, N, N)
        if ctx.kth:
            B, H, N, _ = p.shape
            tau = p.detach().reshape(B, H, N * N).kthvalue(ctx.kth, dim=-1).values  # (B, H)
            p = p.masked_fill(p < tau[..., None, None], 0.0)
        outputs = ((p.to(v.dtype) @ v).transpose(1, 2), p.sum(2), p.diagonal(dim1=-2, dim2=-1), p[:, :, 0])
        used = [(o, g) for o, g in zip(outputs, grads[:4]) if g is not None]
        got = iter(torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], allow_unused=True))
    g_q, g_k, g_v = next(got), next(got), next(got)
    g_log_s = next(got) if ctx.has_log_s else None
    g_bias = next(got) if ctx.has_bias else None
    return g_q, g_k, g_v, g_log_s, None, g_bias, None


attention_op.register_autograd(_attention_backward, setup_context=_save_attention)


def propagate(
    x: Tensor,
    sizes: Tensor | None,
    A0: Tensor,
    rows: Tensor,
    kept: Tensor,
    prop: Tensor,
    alpha: float,
    prefix: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """GTP's propagation by the graph on the CPU in one call: x [B, N, C] (float32 / float64),
    token sizes [B, N] (finite, > 0) or None, the fast backend's LazyGraph (A0 [B, a, a], rows
    [B, n] rows of A0), kept [B, n - P] and prop [B, P] (image-token indices that together name
    each of the n = N - prefix image tokens once), alpha -> (x [B, prefix + n - P, C] with
    x_K + alpha Â[K, P] x_P for the kept tokens, sizes [B, prefix + n - P] likewise ([B, 0]
    without sizes), the kept tokens' rows of A0 [B, n - P]).  ValueError for indices, rows or
    sizes out of range, before anything is computed.  No autograd: ``ops.propagate`` takes
    torch ops where gradients are needed."""
    prefix = _check_propagate(x, sizes, A0, rows, kept, prop, prefix)
    return run_propagate(x, sizes, A0, rows, kept, prop, alpha, prefix)


def run_propagate(
    x: Tensor,
    sizes: Tensor | None,
    A0: Tensor,
    rows: Tensor,
    kept: Tensor,
    prop: Tensor,
    alpha: float,
    prefix: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``propagate`` for arguments whose shapes and dtypes are checked already (``ops.propagate``
    checks its own, from which these follow; here only that every tensor is on the CPU): the call
    itself, whose C function checks the indices, rows and sizes before it writes anything."""
    if any(t is not None and t.device.type != "cpu" for t in (x, sizes, A0, rows, kept, prop)):
        raise TypeError("the compiled CPU propagation takes CPU tensors only")
    x, rows, kept, prop = (t.contiguous() for t in (x, rows.long(), kept.long(), prop.long()))
    A0 = A0.to(x.dtype).contiguous()
    sizes = None if sizes is None else sizes.to(x.dtype).contiguous()
    (B, N, C), c, nk, n_prop = x.shape, prefix, kept.shape[1], prop.shape[1]
    out, rows_out = x.new_empty(B, c + nk, C), rows.new_empty(B, nk)
    sizes_out = x.new_empty(B, c + nk if sizes is not None else 0)
    status = _call(
        "propagate",
        x,
        sizes,
        A0,
        rows,
        kept,
        prop,
        ints=(B, N, C, c, A0.shape[-1], nk, n_prop, alpha),
        outputs=(out, sizes_out, rows_out),
    )
    _refused("propagation", status)
    if status == PARTITION_ERROR:
        check_partition(kept, prop, nk + n_prop)  # raises the ValueError that says which index is wrong
    if status == GRAPH_ROW:
        check_graph_rows(rows, A0.shape[-1])
    if status == BAD_SIZE:
        check_token_sizes("token_sizes", sizes)
    if status:
        raise MemoryError("the compiled CPU propagation found no memory for its index check")
    return out, sizes_out, rows_out


def _check_propagate(
    x: Tensor, sizes: Tensor | None, A0: Tensor, rows: Tensor, kept: Tensor, prop: Tensor, prefix: int
) -> int:
    _cpu_float("x", x, 3)
    B, N, _ = x.shape
    prefix = integer("prefix", prefix, 0, N)
    if sizes is not None:
        _cpu_float("sizes", sizes, 2)
        check_tensor("sizes", sizes, 2, shape=(B, N))
    _cpu_float("A0", A0, 3)
    check_tensor("A0", A0, 3, shape=(B, A0.shape[1], A0.shape[1]))
    if A0.shape[1] == 0:
        raise ValueError("A0 has shape [B, 0, 0]: a graph needs at least one row")
    n = N - prefix
    _cpu_index("rows", rows, (B, n))
    kept, prop = _cpu_index("kept", kept, (B, None)), _cpu_index("prop", prop, (B, None))
    if kept.shape[1] + prop.shape[1] != n:
        raise ValueError(
            f"kept [{B}, {kept.shape[1]}] and prop [{B}, {prop.shape[1]}] must together hold the "
            f"n = {n} image tokens of x ({N} tokens, {prefix} of them prefix tokens)"
        )
    return prefix


def check_graph_rows(rows: Tensor, count: int) -> None:
    """The LazyGraph's rows [B, n] name rows of its A0 (0 .. count - 1); ValueError otherwise."""
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= count):
        bad = int(rows.min()) if int(rows.min()) < 0 else int(rows.max())
        raise ValueError(
            f"G.rows hold row {bad}, outside the {count} rows of G.A0 (a LazyGraph's rows name rows "
            "of its first layer's graph)"
        )


# The custom ops, for torch.compile; eager code calls the functions themselves (the dispatcher's
# few microseconds a call count at batch 1, where a whole call takes a few more).
propagate_op = torch.library.custom_op("gtp_ref::cpu_propagate", propagate, mutates_args=())


@propagate_op.register_fake
def _(x, sizes, A0, rows, kept, prop, alpha, prefix):
    _check_propagate(x, sizes, A0, rows, kept, prop, prefix)
    B, _, C = x.shape
    nk = kept.shape[1]
    return (
        x.new_empty(B, prefix + nk, C),
        x.new_empty(B, prefix + nk if sizes is not None else 0),
        rows.new_empty(B, nk, dtype=torch.int64),
    )


def select_tokens(scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """``gtp_ref.select.select_tokens`` on the CPU without a sort: scores [B, n] (float32 / float64),
    1 <= num_prop <= min(n, SELECT_MAX) -> (kept [B, n - num_prop] ascending, prop [B, num_prop]
    from the lowest score up; on equal scores the larger index first, NaN last)."""
    return run_select_tokens(scores, _check_select(scores, num_prop))


def run_select_tokens(scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """``select_tokens`` for arguments checked already (``ops.select_tokens`` checks its own and
    routes only CPU float32 / float64 scores and 1 <= num_prop <= SELECT_MAX here)."""
    scores = scores.contiguous()
    B, n = scores.shape
    kept, prop = (
        scores.new_empty(B, n - num_prop, dtype=torch.int64),
        scores.new_empty(B, num_prop, dtype=torch.int64),
    )
    if B:
        status = _call("select_tokens", scores, ints=(B, n, num_prop), outputs=(kept, prop))
        _refused("selection", status)
        if status:
            raise MemoryError(f"the compiled CPU selection found no memory for {n} tokens")
    return kept, prop


def _check_select(scores: Tensor, num_prop: int) -> int:
    _cpu_float("scores", scores, 2)
    return integer("num_prop", num_prop, 1, min(scores.shape[1], SELECT_MAX))


select_tokens_op = torch.library.custom_op("gtp_ref::cpu_select_tokens", select_tokens, mutates_args=())


@select_tokens_op.register_fake
def _(scores, num_prop):
    num_prop = _check_select(scores, num_prop)
    B, n = scores.shape
    return scores.new_empty(B, n - num_prop, dtype=torch.int64), scores.new_empty(
        B, num_prop, dtype=torch.int64
    )


def work_kept(dtype: torch.dtype) -> int:
    """The bytes of work buffer the compiled attention keeps for this thread between calls (at
    most 32 MiB: a larger map's buffer is released at the end of its call)."""
    return int(_function("work_kept", dtype)())
