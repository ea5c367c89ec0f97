"""The fast backend: the op-level API of ``gtp_ref.dense``, built for speed on the CPU and the GPU.

Same results as the dense reference (the property tests and the conformance suite check it,
``GTP_IMPL=gtp_ref.fast``); what differs is how they are computed:

* **No host synchronisation and no data-dependent shapes.**  Every tensor's shape follows from
  the input's shape and the schedule (no ``nonzero``, ``masked_select`` or ``.item()``), so
  the host never waits for the GPU and a whole forward can be captured in a CUDA graph
  (``cuda_graphed``).  A CUDA test runs the forward under ``torch.cuda.set_sync_debug_mode``.
* **An exact threshold in about two passes, not a sort.**  The k-th smallest of each head's N^2
  attention entries: on the CPU (float32 / float64) a compiled radix selection
  (``gtp_ref._native``: a histogram of the top bits, a copy of the few values in the k-th
  value's bin, the same again on the next bits, a quickselect among what is left); on CUDA
  ``torch.topk`` (a multi-block radix selection) instead of ``torch.kthvalue`` (one block per
  head); inside the one-kernel attention below, radix passes over the map's bits.  All three
  give kthvalue's value.
* **The graph is never shrunk.**  A ``LazyGraph`` keeps the first layer's Â and, per image, the
  original index of every current token; each layer gathers only Â[K, P] ((n - P) x P entries
  per image) and never copies Â[K, K].  Memory: B (n + 1)^2 graph entries, fine at ViT
  resolutions (n = 196 or 576); for very large grids use ``gtp_ref.sparse``.
* **The attention without separate passes over its map.**  ``attend_and_score`` (used by
  ``GTPViT`` with this backend) computes a block's attention and the selection's scores by one
  of three paths, for the selections scored from columns, diagonal or the [CLS] row
  (``COLUMN_SELECTIONS``, the paper's ``mixed_attn_max`` among them, and ``cls_attn_*``):

  ``native`` (CPU, float32 / float64): the reference's map, then one compiled call per block
  (``_native.mask_heads``) that finds each head's threshold, masks the map and sums its columns
  while the head's map is in cache.

  ``one_kernel`` (CUDA, N <= 256 -- ViTs at 224 px --, float32 / float64 or autocast): one Triton
  program per image and head does it all (``_triton.gtp_attention``): q k^T + log s, the row
  softmax, the exact threshold, the masking, Att v and the column sums / diagonal / first row,
  recomputing the map for each pass instead of writing it -- no N x N tensor in memory.

  ``two_kernel`` (CUDA, N <= 1024; column and diagonal selections): the row softmax kernel, a
  ``topk`` threshold, then one kernel that masks the map, casts it for ``Att v`` and sums its
  columns and diagonal.

  Elsewhere (other selections, N > 1024, float16 on the CPU, no C compiler) it returns None and
  the model takes the explicit path with the ops of this module.  Under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before ``gtp_ref`` is imported) the Triton paths run on CPU
  tensors instead, slowly: how the test suite checks them without a GPU.

Token scores and selection are the dense reference's (static shapes already: a sort of the n
scores per image).
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gtp_ref import _native
from gtp_ref._checks import check_propagate_args, check_sparsity, check_square_map, prefix_count
from gtp_ref.backends import Backend
from gtp_ref.graph import token_graph as dense_token_graph
from gtp_ref.propagate import gather_tokens
from gtp_ref.select import COLUMN_SELECTIONS, column_scores, head_thresholds, select_tokens, sparsity_k, token_scores
from gtp_ref.vit import Block

try:  # the fused kernels, where Triton is installed (the GPU machine has it; CPU CI does not)
    from gtp_ref import _triton as _kernels
except ImportError:
    _kernels = None
# The device type the fused kernels run on: "cuda" (compiled), "cpu" (Triton's interpreter), or None.
FUSED_DEVICE = None if _kernels is None else "cpu" if _kernels.INTERPRETED else "cuda"


def kth_smallest(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of each row: rows [R, L] -> [R], rows' dtype.

    On the CPU (float32 / float64) by the compiled selection of ``gtp_ref._native`` (two streaming
    passes per row); elsewhere the smallest of the L - k + 1 largest or the largest of the k
    smallest, by ``torch.topk``, whichever asks for fewer (on CUDA a multi-block radix selection;
    ``torch.kthvalue`` runs one block per row).  docs/performance.md compares them
    (``python -m gtp_ref.bench threshold``).
    """
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) and _native.available():
        return _native.kth_smallest_rows(rows, k)
    L = rows.shape[-1]
    if k <= L - k + 1:
        return rows.topk(k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)
    # the smallest of the L - k + 1 largest; NaN ranks above +inf (topk's and kthvalue's order), so
    # it is NaN only where all of them are
    top = rows.topk(L - k + 1, dim=-1, largest=True, sorted=False).values
    nan = top.isnan()
    return torch.where(nan.all(dim=-1), top[..., 0], top.masked_fill(nan, float("inf")).amin(dim=-1))


def _native_cpu(t: Tensor) -> bool:
    """Whether ``gtp_ref._native``'s compiled selection takes t: CPU float32 / float64, not
    under Triton's interpreter (which runs the GPU kernels on CPU tensors instead)."""
    return (t.device.type == "cpu" and FUSED_DEVICE != "cpu" and t.dtype in (torch.float32, torch.float64)
            and _native.available())


def _kth(N: int, sparsity: float) -> int:
    """The threshold's rank among a head's N^2 entries; 0 where theta = 1 keeps them all."""
    return sparsity_k(N, sparsity) if check_sparsity(sparsity) < 1 else 0


def sparsify_attention(attn: Tensor, sparsity: float) -> Tensor:
    """``gtp_ref.dense.sparsify_attention`` with the threshold from ``kth_smallest``.  On the CPU
    the compiled ``_native.mask_heads`` (threshold and masking, one call); elsewhere a product
    with the kept entries' mask (one pass instead of masked_fill's two; the same values for
    finite maps -- an infinite entry below the threshold would give NaN, which softmax maps have not)."""
    if _native_cpu(attn):
        check_square_map(attn)
        return _native.mask_heads(attn, _kth(attn.shape[-1], sparsity))[0]
    tau = head_thresholds(attn, sparsity, kth_smallest)  # (B, H) or None
    if tau is None:
        return attn
    return attn * (attn >= tau[..., None, None])  # (B, H, N, N)


MAX_FUSED_TOKENS = 1024  # the two-kernel path's softmax holds a whole row of the map in one program
FUSED_PATHS = ("auto", "native", "one_kernel", "two_kernel")
CLS_SELECTIONS = ("cls_attn_mean", "cls_attn_max")
PATH_NEEDS = {"native": "a CPU float32 / float64 input without autocast, and a C compiler",
              "one_kernel": "Triton on CUDA (or its interpreter), N <= 256, and float32 / float64 or autocast",
              "two_kernel": "Triton on CUDA (or its interpreter), N <= 1024, and a selection scored from columns "
                            "and diagonal"}


def _fused_path(x: Tensor, selection: str | None) -> tuple[str | None, str]:
    """The path attend_and_score takes for x [B, N, C] and the selection, or None and why not."""
    N, cpu = x.shape[1], x.device.type == "cpu"
    autocast = torch.is_autocast_enabled(x.device.type)
    column = selection is None or selection in COLUMN_SELECTIONS
    if selection is not None and selection not in COLUMN_SELECTIONS + CLS_SELECTIONS:
        return None, f"selection={selection!r} is scored from more than columns, diagonal and [CLS] row"
    if cpu and FUSED_DEVICE != "cpu":
        if not autocast and _native_cpu(x):
            return "native", ""
        return None, f"on the CPU the native path takes float32 / float64 without autocast and a C compiler " \
                     f"(got {x.dtype}, autocast={autocast}, compiled: {_native.REASON or 'yes'})"
    if x.device.type != FUSED_DEVICE:
        return None, f"the kernels run on {FUSED_DEVICE or 'CUDA with Triton (not installed)'}, not {x.device.type}"
    if N <= _kernels.MAX_ONE_KERNEL_TOKENS and (autocast or x.dtype in (torch.float32, torch.float64)):
        return "one_kernel", ""
    if N <= MAX_FUSED_TOKENS and column:
        return "two_kernel", ""
    return None, f"N={N} tokens: the kernels take at most {MAX_FUSED_TOKENS} ({_kernels.MAX_ONE_KERNEL_TOKENS} " \
                 f"for float16 / bfloat16 without autocast and for the [CLS]-row scores)"


NATIVE_MAP_ENTRIES = 1 << 23  # a larger map (32 MB in float32) is processed in pieces ...
NATIVE_PIECE_ENTRIES = 1 << 21  # ... of at most this many entries (or one head), which stay in cache


def _native_attention(attn: Any, q: Tensor, k: Tensor, v: Tensor, sizes: Tensor | None, kth: int
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``native`` path: Att v [B, N, H d] and the masked map's column sums, diagonal and first
    row [B, H, N] -- the map by the reference's own op, then ``_native.mask_heads``.  A map beyond
    NATIVE_MAP_ENTRIES is computed a few heads of one image at a time, so that each piece's
    passes (softmax, threshold, masking, Att v) find it in cache rather than in memory."""
    B, H, N, d = q.shape
    if B * H * N * N <= NATIVE_MAP_ENTRIES:
        masked, col_sums, diagonal, first_row, _ = _native.mask_heads(attn.map(q, k, sizes), kth)
        return attn.mix(masked, v), col_sums, diagonal, first_row
    out = v.new_empty(B, H, N, d)
    col_sums, diagonal, first_row = (q.new_empty(B, H, N) for _ in range(3))
    per = max(1, NATIVE_PIECE_ENTRIES // (N * N))  # heads per piece
    for b in range(B):
        for h in range(0, H, per):
            piece = (slice(b, b + 1), slice(h, h + per))
            part = attn.map(q[piece], k[piece], None if sizes is None else sizes[b:b + 1])  # (1, h, N, N)
            masked, col_sums[piece], diagonal[piece], first_row[piece], _ = _native.mask_heads(part, kth)
            torch.matmul(masked, v[piece], out=out[piece])
    return out.transpose(1, 2).reshape(B, N, H * d), col_sums, diagonal, first_row


def attend_and_score(block: Block, x: Tensor, token_scales: Tensor | None, sparsity: float, selection: str | None,
                     class_token: bool, path: str = "auto") -> tuple[Tensor, Tensor | None] | None:
    """A GTP block's attention and the token scores, without the explicit path's separate passes
    over the attention map.

    x [B, N, C] -> (Attn(LN1 x) [B, N, C], scores [B, n] or None when selection is None),
    the same as ``GTPBlock.attend``'s explicit path (attention with the sparsified map, then
    ``token_scores``); or None where no path applies (see the module docstring) -- the caller
    then takes the explicit path.  ``path``: "auto" picks ``native`` on the CPU, ``one_kernel``
    on CUDA up to 256 tokens and ``two_kernel`` up to 1024; naming one times or tests it (a
    ValueError says why where it does not apply).
    """
    if path not in FUSED_PATHS:
        raise ValueError(f"path={path!r}: one of {', '.join(FUSED_PATHS)}")
    chosen, why = _fused_path(x, selection)
    if path == "two_kernel" and chosen == "one_kernel" and selection not in CLS_SELECTIONS:
        chosen = "two_kernel"
    if path != "auto" and chosen != path:
        raise ValueError(f"path={path!r} needs {PATH_NEEDS[path]}; this input (N={x.shape[1]}, {x.dtype} on "
                         f"{x.device.type}, selection={selection!r}) takes {chosen or 'the explicit path'}"
                         f"{': ' + why if why else ''}")
    if chosen is None:
        return None
    B, N, C = x.shape
    attn, c = block.attn, prefix_count(class_token)
    q, k, v = attn.heads(block.norm1(x))  # (B, H, N, d)
    first_row = None
    if chosen == "one_kernel":  # one Triton program per image and head: no N x N tensor in memory
        log_s = None if token_scales is None else token_scales.log()  # (B, N)
        out, col_sums, diagonal, first_row = _kernels.gtp_attention(q * attn.scale, k, v, log_s, _kth(N, sparsity))
        out = attn.proj(out.reshape(B, N, C))  # (B, N, C)
    elif chosen == "native":  # the reference's map, then threshold, masking and reductions in one C call
        out, col_sums, diagonal, first_row = _native_attention(attn, q, k, v, token_scales, _kth(N, sparsity))
        out = attn.proj(out)
    else:  # two Triton kernels around a topk threshold
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, N, N), autocast's dtype; scaled as the reference
        log_s = None if token_scales is None else token_scales.log()  # (B, N)
        # softmax runs in float32 under autocast, else in the type promotion of logits and log s
        probs_dtype = (torch.float32 if torch.is_autocast_enabled(x.device.type) else
                       logits.dtype if log_s is None else torch.promote_types(logits.dtype, log_s.dtype))
        probs = _kernels.softmax_rows(logits, log_s, probs_dtype)  # (B, H, N, N)
        tau = head_thresholds(probs, sparsity, kth_smallest)  # (B, H) or None
        masked, col_sums, diagonal = _kernels.mask_and_reduce(probs, tau, v.dtype)
        out = attn.proj(attn.mix(masked, v))
    if selection is None:
        return out, None
    if selection in CLS_SELECTIONS:  # the first prefix token's row over the image tokens' columns
        first = first_row[..., c:]  # (B, H, n)
        return out, first.mean(dim=1) if selection.endswith("mean") else first.amax(dim=1)
    return out, column_scores(col_sums[..., c:], diagonal[..., c:], selection)


@dataclass
class LazyGraph:
    """Â of the current image tokens, as rows / columns of the first layer's graph.

    A0: [B, n0 + 1, n0 + 1], the first layer's Â with one extra zero row and column (index n0,
    the node of a ``mean`` token, which has no edges); ids: [B, n] long, the row of A0 of each
    current token.  Â[b, i, j] = A0[b, ids[b, i], ids[b, j]].
    """

    A0: Tensor
    ids: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        B, n = self.ids.shape
        return (B, n, n)

    def block(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Â[b, rows[b]][:, cols[b]] for rows [B, r], cols [B, c] (current-token indices) -> [B, r, c]."""
        r, c = self.ids.gather(1, rows), self.ids.gather(1, cols)  # (B, r), (B, c) rows of A0
        b = torch.arange(r.shape[0], device=r.device)[:, None, None]
        return self.A0[b, r[:, :, None], c[:, None, :]]


def token_graph(x_img: Tensor, grid: tuple[int, int], graph: str = "mixed", num_neighbours: int = 4) -> LazyGraph:
    """The dense reference's Â, wrapped as a LazyGraph over all n tokens."""
    A = dense_token_graph(x_img, grid, graph, num_neighbours)  # (B, n, n)
    B, n, _ = A.shape
    ids = torch.arange(n, device=A.device).expand(B, n)
    return LazyGraph(F.pad(A, (0, 1, 0, 1)), ids)


def to_dense(G: LazyGraph) -> Tensor:
    """LazyGraph -> Â [B, n, n] (for tests and inspection)."""
    everyone = torch.arange(G.ids.shape[1], device=G.ids.device).expand_as(G.ids)
    return G.block(everyone, everyone)


def propagate(x: Tensor, G: LazyGraph | None, kept: Tensor, prop: Tensor, alpha: float,
              token_scales: Tensor | None = None, class_token: bool | int = True,
              mode: str = "graph") -> tuple[Tensor, LazyGraph | None, Tensor | None]:
    """Same contract as ``gtp_ref.dense.propagate``, with G a LazyGraph (or None for mean/none).

    graph: x_K <- x_K + alpha Â[K, P] x_P with Â[K, P] gathered from A0; the next graph is the
    same A0 with ids[K] (Â[K, K], not renormalised, never copied).
    """
    # the index-value check reads its result (a host synchronisation): on the CPU only
    check_propagate_args(x, G, kept, prop, alpha, token_scales, class_token, mode, graph_type=LazyGraph,
                         values=not x.is_cuda)
    c = prefix_count(class_token)
    cls, x_img = x[:, :c], x[:, c:]  # (B, c, C), (B, n, C)
    x_K = gather_tokens(x_img, kept)  # (B, n-P, C)
    s_cls = s_K = s_img = None
    if token_scales is not None:
        s_cls, s_img = token_scales[:, :c], token_scales[:, c:]  # (B, c), (B, n)
        s_K = gather_tokens(s_img, kept)  # (B, n-P)
    G_next = None if G is None else LazyGraph(G.A0, G.ids.gather(1, kept))

    if mode == "graph":
        A_KP = G.block(kept, prop)  # (B, n-P, P)
        x_K = x_K + alpha * (A_KP @ gather_tokens(x_img, prop))  # (B, n-P, C)
        if s_K is not None:
            s_K = s_K + alpha * (A_KP @ gather_tokens(s_img, prop)[..., None])[..., 0]  # (B, n-P)
    elif mode == "mean" and prop.shape[1] > 0:
        x_K = torch.cat([x_K, gather_tokens(x_img, prop).mean(dim=1, keepdim=True)], dim=1)
        if s_K is not None:
            s_K = torch.cat([s_K, gather_tokens(s_img, prop).sum(dim=1, keepdim=True)], dim=1)
        if G_next is not None:  # the mean token is node n0 of A0: no edges
            mean_id = G_next.ids.new_full((G_next.ids.shape[0], 1), G.A0.shape[-1] - 1)
            G_next = LazyGraph(G.A0, torch.cat([G_next.ids, mean_id], dim=1))

    x = torch.cat([cls, x_K], dim=1)
    scales = None if s_K is None else torch.cat([s_cls, s_K], dim=1)
    return x, G_next, scales


def cuda_graphed(fn: Callable[[Tensor], Tensor], example: Tensor, warmup: int = 3) -> Callable[[Tensor], Tensor]:
    """``fn`` replayed from a CUDA graph, for inputs shaped like ``example`` (a CUDA tensor).

    The returned callable copies its input into the captured input buffer, replays, and returns
    the captured output buffer (overwritten by the next call: clone it to keep it).  Capture
    fails loudly if ``fn`` synchronises with the host.
    """
    if not example.is_cuda:
        raise ValueError(f"cuda_graphed needs a CUDA example input, got device {example.device}")
    static_in = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph: kernels compiled, caches filled
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def replay(x):
        if x.shape != static_in.shape:
            raise ValueError(f"captured for input shape {list(static_in.shape)}, got {list(x.shape)}")
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay


BACKEND = Backend("fast", token_graph, to_dense, sparsify_attention, token_scores, select_tokens, propagate,
                  attend_and_score)

__all__ = ["token_graph", "to_dense", "sparsify_attention", "token_scores", "select_tokens",
           "propagate", "LazyGraph", "kth_smallest", "attend_and_score", "cuda_graphed"]
