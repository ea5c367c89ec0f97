"""The fast backend's ops (``gtp_ref.backends.fast`` says what they do and how).  Their results
are the dense reference's."""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gtp_ref._checks import (
    SELECTIONS,
    check_graph_input,
    check_partition,
    check_propagate_args,
    check_select_input,
    check_sparsity,
    check_square_map,
    check_tensor,
    check_token_sizes,
    prefix_count,
    renamed_keywords,
)
from gtp_ref.backends import OPS
from gtp_ref.backends.fast import cpu
from gtp_ref.backends.fast.cpu_build import SELECT_MAX
from gtp_ref.graph import cosine_similarity, inv_sqrt_degree, semantic_threshold, spatial_graph
from gtp_ref.select import COLUMN_SELECTIONS, column_scores, head_thresholds, sparsity_k
from gtp_ref.select import select_tokens as sorted_selection
from gtp_ref.select import token_scores as token_scores  # the reference's, re-exported (an op of the API)
from gtp_ref.validate import choice, integer, real

try:  # the Triton kernels, where Triton is installed (a CUDA build of torch brings it)
    from gtp_ref.backends.fast import cuda
except ImportError:
    cuda = None
# The device type the Triton kernels run on: "cuda" (compiled), "cpu" (Triton's interpreter), or None.
TRITON_DEVICE = None if cuda is None else "cpu" if cuda.INTERPRETED else "cuda"


def kth_smallest(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of each row: rows [R, L] -> [R], rows' dtype.

    On the CPU (float32 / float64) by the compiled selection of ``gtp_ref.backends.fast.cpu`` (two streaming
    passes per row); elsewhere the smallest of the L - k + 1 largest or the largest of the k
    smallest, by ``torch.topk``, whichever asks for fewer (on CUDA a multi-block radix selection;
    ``torch.kthvalue`` runs one block per row).  docs/performance.md compares them
    (``python -m gtp_ref.apps.bench threshold``).  1 <= k <= L, else ValueError.
    """
    check_tensor("rows", rows, 2, floating=True)
    if rows.shape[1] == 0:
        raise ValueError(f"rows has shape {list(rows.shape)}: no k-th smallest of an empty row")
    k = integer("k", k, 1, rows.shape[1])
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) and cpu.available():
        return cpu.kth_smallest_rows(rows, k)
    L = rows.shape[-1]
    if k <= L - k + 1:
        return rows.topk(k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)
    # the smallest of the L - k + 1 largest; NaN ranks above +inf (topk's and kthvalue's order), so
    # it is NaN only where all of them are
    top = rows.topk(L - k + 1, dim=-1, largest=True, sorted=False).values
    nan = top.isnan()
    return torch.where(nan.all(dim=-1), top[..., 0], top.masked_fill(nan, float("inf")).amin(dim=-1))


def _compiled_cpu(t: Tensor) -> bool:
    """Whether ``gtp_ref.backends.fast.cpu``'s compiled selection takes t: CPU float32 / float64, not
    under Triton's interpreter (which runs the GPU kernels on CPU tensors instead)."""
    return (
        t.device.type == "cpu"
        and TRITON_DEVICE != "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and cpu.available()
    )


def _kth(N: int, sparsity: float) -> int:
    """The threshold's rank among a head's N^2 entries; 0 where theta = 1 keeps them all."""
    return sparsity_k(N, sparsity) if check_sparsity(sparsity) < 1 else 0


def sparsify_attention(attn: Tensor, sparsity: float) -> Tensor:
    """``gtp_ref.backends.dense.sparsify_attention`` with the threshold from ``kth_smallest``.  On the CPU
    the compiled ``cpu.mask_heads`` (threshold and masking, one call); elsewhere a product
    with the kept entries' mask (one pass instead of masked_fill's two; the same values for
    finite maps -- an infinite entry below the threshold would give NaN, which softmax maps have not)."""
    if _compiled_cpu(attn):
        check_square_map(attn)
        return cpu.mask_heads(attn, _kth(attn.shape[-1], sparsity))[0]
    tau = head_thresholds(attn, sparsity, kth_smallest)  # (B, H) or None
    if tau is None:
        return attn
    return attn * (attn >= tau[..., None, None])  # (B, H, N, N)


CLS_SELECTIONS = ("cls_attn_mean", "cls_attn_max")
# Att v [B, N, H d]; column sums, diagonal, first row [B, H, N]
Reductions = tuple[Tensor, Tensor, Tensor, Tensor]


def _cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_sizes: Tensor | None,
    sparsity: float,
    bias: Tensor | None = None,
    scale: float = 1.0,
) -> Reductions:
    """The ``cuda`` path: ``cuda.attention`` (as a custom op), the map recomputed tile by tile, never
    stored (no relative-position bias: ``attention_path`` routes a bias elsewhere)."""
    if bias is not None:
        raise ValueError("the cuda path takes no relative-position bias (attention_path says so)")
    q = q if scale == 1.0 else q * scale
    B, H, N, d = q.shape
    log_s = None if token_sizes is None else token_sizes.log()  # (B, N)
    out, col_sums, diagonal, first_row = cuda.attention_op(q, k, v, log_s, _kth(N, sparsity))
    return out.reshape(B, N, H * d), col_sums, diagonal, first_row


def _cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_sizes: Tensor | None,
    sparsity: float,
    bias: Tensor | None = None,
    scale: float = 1.0,
) -> Reductions:
    """The ``cpu`` path: the whole attention per image and head in one compiled call -- the custom
    op ``cpu.attention_op`` under torch.compile or where a gradient is needed, else the call itself
    (``cpu.run_attention``: at batch 1 the dispatcher and a second round of checks cost more than a
    small map's arithmetic).  The kernel checks that every token size is finite and > 0."""
    B, H, N, _ = q.shape
    log_s = None if token_sizes is None else token_sizes.log()  # (B, N)
    if torch.compiler.is_compiling() or _needs_grad(q, k, v, log_s, bias):
        call = cpu.attention_op
    else:
        call = cpu.run_attention  # ``attention``'s checks and ``attention_path`` cover the op's
    try:
        # out: (B, N, H, d)
        out, col_sums, diagonal, first_row, _ = call(q, k, v, log_s, _kth(N, sparsity), bias, scale)
    except ValueError:
        if token_sizes is not None:
            check_token_sizes("token_sizes", token_sizes)  # the message that names the token size
        raise
    return out.reshape(B, N, H * v.shape[-1]), col_sums, diagonal, first_row


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether a gradient is to flow through any of the tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# The attention paths by name: each (q, k, v, token_sizes, sparsity, bias=None, scale=1.0) ->
# Reductions, for the inputs ``attention_path`` routes to it (tests and ``python -m
# gtp_ref.apps.bench attention`` call them by name).
PATHS: dict[str, Callable[..., Reductions]] = {"cpu": _cpu, "cuda": _cuda}


def _cpu_kernel_takes(q: Tensor, autocast: bool) -> bool:
    """Whether the compiled CPU attention computes the reference's map for q: float32 / float64
    without autocast; bfloat16 / float16 without autocast or in autocast's own dtype (autocast
    casts the products' inputs to it, so the map is then the one of that dtype)."""
    if q.dtype in (torch.float32, torch.float64):
        return not autocast and _compiled_cpu(q)
    return (
        q.dtype in (torch.bfloat16, torch.float16)
        and (not autocast or q.dtype == torch.get_autocast_dtype("cpu"))
        and TRITON_DEVICE != "cpu"
        and cpu.available()
    )


def attention_path(q: Tensor, selection: str | None, bias: Tensor | None = None) -> tuple[str | None, str]:
    """The path ``attention`` takes for q [B, H, N, d], the selection and a relative-position bias
    (or None), and why; or None and why none applies.  ``cpu``: with the compiled kernels, float32
    / float64 without autocast, bfloat16 / float16 (in autocast's dtype where it is on), a bias or
    none; ``cuda``: Triton, N <= ``cuda.MAX_TOKENS``, heads up to ``cuda.MAX_HEAD_DIM`` wide,
    float32 / float64 or autocast, no bias."""
    N, autocast = q.shape[2], torch.is_autocast_enabled(q.device.type)
    if selection is not None and selection not in COLUMN_SELECTIONS + CLS_SELECTIONS:
        return None, f"selection={selection!r} is scored from more than columns, diagonal and [CLS] row"
    if q.device.type == "cpu" and TRITON_DEVICE != "cpu":
        if _cpu_kernel_takes(q, autocast):
            return "cpu", f"{q.dtype} on the CPU, compiled kernels"
        return (
            None,
            "on the CPU the compiled kernels take float32 / float64 without autocast, bfloat16 / "
            "float16 without autocast or in autocast's dtype, and a C compiler (got "
            f"{q.dtype}, autocast={autocast}, compiled: {cpu.REASON or 'yes'})",
        )
    if q.device.type != TRITON_DEVICE:
        return (
            None,
            f"the kernels run on {TRITON_DEVICE or 'CUDA with Triton (not installed)'}, not {q.device.type}",
        )
    if bias is not None:
        return None, "a relative-position bias: the Triton kernels take none"
    if not (autocast or q.dtype in (torch.float32, torch.float64)):
        return (
            None,
            f"{q.dtype} without autocast: the Triton kernels take float32 / float64, or a half type "
            "under autocast",
        )
    if N > cuda.MAX_TOKENS:
        return None, f"N={N} tokens: the kernels take at most {cuda.MAX_TOKENS}"
    if q.shape[-1] > cuda.MAX_HEAD_DIM:
        return None, f"heads {q.shape[-1]} wide: the kernels take at most {cuda.MAX_HEAD_DIM}"
    return "cuda", f"N={N} <= {cuda.MAX_TOKENS}"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_sizes: Tensor | None,
    sparsity: float,
    selection: str | None,
    prefix_tokens: int,
    bias: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor | None] | None:
    """A GTP block's attention and the token scores without the explicit path's separate passes
    over the map (the interface of ``gtp_ref.backends.Backend.attention``).

    q, k, v [B, H, N, d]; token_sizes [B, N] or None; a relative-position bias [B or 1, H, N, N]
    or None; the attention scale, by which q is multiplied (as ``q * scale`` in torch; 1 for a q
    already scaled) -> (Att v [B, N, H d] with the sparsified map, scores [B, n] or None for
    ``selection=None``) -- what the explicit path gives -- or None where no path applies
    (``attention_path``).  Every argument is checked first, as the dense reference's ops check
    theirs.
    """
    _check_attention(q, k, v, token_sizes, sparsity, selection, prefix_tokens, bias, scale)
    path, _ = attention_path(q, selection, bias)
    if path is None:
        return None
    # the token sizes' values: the compiled CPU kernel checks them itself; on CUDA a host sync
    if (
        path != "cpu"
        and token_sizes is not None
        and not token_sizes.is_cuda
        and not torch.compiler.is_compiling()
    ):
        check_token_sizes("token_sizes", token_sizes)
    out, col_sums, diagonal, first_row = PATHS[path](q, k, v, token_sizes, sparsity, bias, scale)
    if selection is None:
        return out, None
    c = prefix_tokens
    if selection in CLS_SELECTIONS:  # the first prefix token's row over the image tokens' columns
        first = first_row[..., c:]  # (B, H, n)
        return out, first.mean(dim=1) if selection.endswith("mean") else first.amax(dim=1)
    return out, column_scores(col_sums[..., c:], diagonal[..., c:], selection)


def _check_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_sizes: Tensor | None,
    sparsity: float,
    selection: str | None,
    prefix_tokens: int,
    bias: Tensor | None,
    scale: float,
) -> None:
    """``attention``'s arguments: q, k [B, H, N, d] and v [B, H, N, dv] of one floating dtype on one
    device, token sizes [B, N] or None (their values: ``attention``), theta, a selection or None,
    0 <= prefix_tokens <= N, a bias [B or 1, H, N, N] on q's device or None, a finite scale."""
    real("scale", scale)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, floating=True)
        if (t.dtype, t.device) != (q.dtype, q.device):
            raise TypeError(
                f"{name} is {t.dtype} on {t.device}, q {q.dtype} on {q.device}: give q, k, v alike"
            )
    B, H, N, d = q.shape
    if H == 0 and selection is not None:
        raise ValueError(f"q has shape {list(q.shape)}: the scores reduce over heads, give at least one")
    check_tensor("k", k, 4, shape=(B, H, N, d))
    check_tensor("v", v, 4, shape=(B, H, N, None))
    if token_sizes is not None:
        check_tensor("token_sizes", token_sizes, 2, floating=True, shape=(B, N))
        if token_sizes.device != q.device:
            raise TypeError(f"token_sizes is on {token_sizes.device}, q on {q.device}")
    if bias is not None:
        check_tensor("bias", bias, 4, floating=True, shape=(None, H, N, N))
        if bias.shape[0] not in (1, B):
            raise ValueError(f"bias has shape {list(bias.shape)}: its first dimension must be 1 or B = {B}")
        if bias.device != q.device:
            raise TypeError(f"bias is on {bias.device}, q on {q.device}")
    check_sparsity(sparsity)
    if selection is not None:
        choice("selection", selection, SELECTIONS)
    c = integer("prefix_tokens", prefix_tokens, 0, N)
    if selection is not None and selection.startswith("cls_attn") and not c:
        raise ValueError(f"selection={selection!r} needs a [CLS] token (prefix_tokens >= 1)")


@dataclass
class LazyGraph:
    """Â of the current image tokens, as rows / columns of the first layer's graph.

    A0: [B, n0 + 1, n0 + 1], the first layer's Â with one extra zero row and column (index n0,
    the node of a ``mean`` token, which has no edges); rows: [B, n] long, the row of A0 of each
    current token.  Â[b, i, j] = A0[b, rows[b, i], rows[b, j]].  (The graph's own bookkeeping:
    the model's record of each token's patch is ``gtp_ref.model.GTPRun.ids``.)
    """

    A0: Tensor
    rows: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        B, n = self.rows.shape
        return (B, n, n)

    def block(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Â[b, rows[b]][:, cols[b]] for rows [B, r], cols [B, c] (current-token indices) -> [B, r, c]."""
        r, c = self.rows.gather(1, rows), self.rows.gather(1, cols)  # (B, r), (B, c) rows of A0
        b = torch.arange(r.shape[0], device=r.device)[:, None, None]
        return self.A0[b, r[:, :, None], c[:, None, :]]


def _check_lazy_graph(G: LazyGraph) -> None:
    """A0 [B, a, a] (a >= 1, floating) and rows [B, n] (integer) of one batch."""
    check_tensor("G.rows", G.rows, 2, floating=False)
    B = G.rows.shape[0]
    check_tensor("G.A0", G.A0, 3, floating=True, shape=(B, G.A0.shape[1], G.A0.shape[1]))
    if G.A0.shape[1] == 0:
        raise ValueError("G.A0 has shape [B, 0, 0]: a graph needs at least one row")


def token_graph(
    x_img: Tensor, grid: tuple[int, int], graph: str = "mixed", num_neighbours: int = 4
) -> LazyGraph:
    """The dense reference's Â (``gtp_ref.graph.token_graph``, the same values), wrapped as a LazyGraph
    over all n tokens: built in place in A0 with the spatial graph kept between calls, in a few
    passes over the n x n matrix instead of the reference's dozen."""
    grid, n = check_graph_input(x_img, grid, graph, num_neighbours)
    B = x_img.shape[0]
    A0 = x_img.new_zeros(B, n + 1, n + 1)
    A = A0[:, :n, :n]  # (B, n, n)
    if graph in ("spatial", "mixed"):
        # (n, n); never a traced tensor in the cache
        S = (
            spatial_graph(grid, dtype=x_img.dtype, device=x_img.device)
            if torch.compiler.is_compiling()
            else _spatial(grid, x_img.dtype, x_img.device)
        )
        A.copy_(S.expand(B, n, n))
    if graph in ("semantic", "mixed") and num_neighbours > 0:
        K = cosine_similarity(x_img)  # (B, n, n)
        K.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))  # a token is never its own neighbour
        A.masked_fill_(K >= semantic_threshold(K, num_neighbours), 1.0)  # S or E
        A.diagonal(dim1=-2, dim2=-1).zero_()
    d = inv_sqrt_degree(A.sum(dim=-1))  # (B, n)
    A.mul_(d[..., :, None]).mul_(d[..., None, :])  # D^-1/2 A D^-1/2
    return LazyGraph(A0, torch.arange(n, device=x_img.device).expand(B, n))


@functools.lru_cache(maxsize=16)
def _spatial(grid: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The spatial graph S of a grid, kept between calls (it depends on nothing else)."""
    return spatial_graph(grid, dtype=dtype, device=device)


def to_dense(G: LazyGraph) -> Tensor:
    """LazyGraph -> Â [B, n, n] (for tests and inspection)."""
    everyone = torch.arange(G.rows.shape[1], device=G.rows.device).expand_as(G.rows)
    return G.block(everyone, everyone)


def _rows(t: Tensor, idx: Tensor, offset: int) -> Tensor:
    """t[b, offset + idx[b]] for t [B, N, ...] and idx [B, k] -> [B, k, ...]: one index_select over
    the batch's rows (a few times faster than advanced indexing or gather at ViT sizes)."""
    B, N = t.shape[:2]
    flat = (idx + (torch.arange(B, device=idx.device)[:, None] * N + offset)).flatten()  # (B k)
    return t.reshape(B * N, *t.shape[2:]).index_select(0, flat).view(B, idx.shape[1], *t.shape[2:])


def select_tokens(scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """``gtp_ref.select.select_tokens`` (the same indices): on the CPU (float32 / float64, 1 <=
    num_prop <= ``SELECT_MAX``) without a sort, by the compiled ``cpu.select_tokens``
    (O(n num_prop)); elsewhere the reference's sort."""
    num_prop = check_select_input(scores, num_prop)
    if 0 < num_prop <= SELECT_MAX and _compiled_cpu(scores):
        return (cpu.select_tokens_op if torch.compiler.is_compiling() else cpu.run_select_tokens)(
            scores, num_prop
        )
    return sorted_selection(scores, num_prop)


def _without_grad(x: Tensor, G: LazyGraph | None, token_sizes: Tensor | None) -> bool:
    """Whether no gradient flows through propagate's inputs (the compiled propagation has none)."""
    return not torch.is_grad_enabled() or not any(
        t is not None and t.requires_grad for t in (x, token_sizes, None if G is None else G.A0)
    )


@renamed_keywords
def propagate(
    x: Tensor,
    G: LazyGraph | None,
    kept: Tensor,
    prop: Tensor,
    alpha: float,
    token_sizes: Tensor | None = None,
    prefix_tokens: bool | int = True,
    mode: str = "graph",
) -> tuple[Tensor, LazyGraph | None, Tensor | None]:
    """Same contract as ``gtp_ref.backends.dense.propagate``, with G a LazyGraph (or None for mean/none).

    graph: x_K <- x_K + alpha Â[K, P] x_P with Â[K, P] gathered from A0; the next graph is the
    same A0 with rows[K] (Â[K, K], not renormalised, never copied).  On the CPU (float32 / float64,
    no gradients needed) in one compiled call, ``cpu.propagate``; else in torch ops.
    """
    check_propagate_args(
        x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode, graph_type=LazyGraph, values=False
    )
    if G is not None:
        _check_lazy_graph(G)
    c = prefix_count(prefix_tokens)
    # it checks the values itself
    if mode == "graph" and _compiled_cpu(x) and _without_grad(x, G, token_sizes):
        # eager: the call without a second round of checks (those above cover the op's)
        compiled_propagate = cpu.propagate_op if torch.compiler.is_compiling() else cpu.run_propagate
        x, scales, rows = compiled_propagate(x, token_sizes, G.A0.to(x.dtype), G.rows, kept, prop, alpha, c)
        return x, LazyGraph(G.A0, rows), None if token_sizes is None else scales
    # the checks read their result: on a GPU, a host sync
    if not x.is_cuda and not torch.compiler.is_compiling():
        check_partition(kept, prop, x.shape[1] - c)
        if token_sizes is not None:
            check_token_sizes("token_sizes", token_sizes)
        if G is not None:
            cpu.check_graph_rows(G.rows, G.A0.shape[-1])
    x_K = _rows(x, kept, c)  # (B, n-P, C)
    s_K = None if token_sizes is None else _rows(token_sizes, kept, c)  # (B, n-P)
    G_next = None if G is None else LazyGraph(G.A0, G.rows.gather(1, kept))

    if mode == "graph":
        A_KP = G.block(kept, prop)  # (B, n-P, P)
        x_K = torch.baddbmm(x_K, A_KP, _rows(x, prop, c), alpha=alpha)  # x_K + alpha A_KP x_P
        if s_K is not None:
            s_K = torch.baddbmm(s_K[..., None], A_KP, _rows(token_sizes, prop, c)[..., None], alpha=alpha)[
                ..., 0
            ]
    elif mode == "mean" and prop.shape[1] > 0:
        x_K = torch.cat([x_K, _rows(x, prop, c).mean(dim=1, keepdim=True)], dim=1)
        if s_K is not None:
            s_K = torch.cat([s_K, _rows(token_sizes, prop, c).sum(dim=1, keepdim=True)], dim=1)
        if G_next is not None:  # the mean token is node n0 of A0: no edges
            mean_id = G_next.rows.new_full((G_next.rows.shape[0], 1), G.A0.shape[-1] - 1)
            G_next = LazyGraph(G.A0, torch.cat([G_next.rows, mean_id], dim=1))

    x = torch.cat([x[:, :c], x_K], dim=1)
    scales = None if s_K is None else torch.cat([token_sizes[:, :c], s_K], dim=1)
    return x, G_next, scales


__all__ = [*OPS, "attention", "attention_path", "kth_smallest", "LazyGraph", "PATHS"]
