"""The fast backend: the op-level API of ``gtp_ref.dense``, built for speed on a GPU.

Same results as the dense reference (the property tests and the conformance suite check it,
``GTP_IMPL=gtp_ref.fast``); what differs is how they are computed:

* **No host synchronisation and no data-dependent shapes.**  Every tensor's shape follows from
  the input's shape and the schedule (no ``nonzero``, ``masked_select`` or ``.item()``), so
  the host never waits for the GPU and a whole forward can be captured in a CUDA graph
  (``cuda_graphed``).  A CUDA test runs the forward under ``torch.cuda.set_sync_debug_mode``.
* **The sparsity threshold by ``topk``.**  The k-th smallest of each head's N^2 attention
  entries comes from ``torch.topk`` (exact; on CUDA a multi-block radix selection) instead of
  ``torch.kthvalue`` (on CUDA one block per head), the most expensive op of a GTP forward; on
  the CPU ``topk`` is faster too.
* **The graph is never shrunk.**  A ``LazyGraph`` keeps the first layer's Â and, per image, the
  original index of every current token; each layer gathers only Â[K, P] ((n - P) x P entries
  per image) and never copies Â[K, K].  Memory: B (n + 1)^2 graph entries, fine at ViT
  resolutions (n = 196 or 576); for very large grids use ``gtp_ref.sparse``.
* **A fused attention map.**  ``attend_and_score`` (used by ``GTPViT`` with this backend) runs a
  block's attention on CUDA with two Triton kernels around the threshold: the row softmax of
  the scaled logits plus log s, then one pass that masks the map, casts it for ``Att v`` and
  sums the columns and the diagonal the scores need -- instead of a dozen separate passes.
  It applies to the selections scored from columns and diagonal (``COLUMN_SELECTIONS``, the
  paper's ``mixed_attn_max`` among them); elsewhere (CPU, no Triton, other selections, N > 1024)
  it returns None and the model takes the reference path with the ops above.  The map kernels
  take float16 / bfloat16 / float32 / float64 logits (float64 computes in float64).  Under
  Triton's interpreter (``TRITON_INTERPRET=1`` set before ``gtp_ref`` is imported) the fused
  path runs on CPU tensors instead, slowly: how the test suite checks it without a GPU.

Token scores and selection are the dense reference's (static shapes already: a sort of the n
scores per image).
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gtp_ref._checks import check_propagate_args, prefix_count
from gtp_ref.backends import Backend
from gtp_ref.graph import token_graph as dense_token_graph
from gtp_ref.propagate import gather_tokens
from gtp_ref.select import (
    COLUMN_SELECTIONS,
    column_scores,
    head_thresholds,
    select_tokens,
    token_scores,
)
from gtp_ref.select import sparsify_attention as dense_sparsify_attention
from gtp_ref.vit import Block

try:  # the fused kernels, where Triton is installed (the GPU machine has it; CPU CI does not)
    from gtp_ref import _triton as _kernels
except ImportError:
    _kernels = None
# The device type the fused kernels run on: "cuda" (compiled), "cpu" (Triton's interpreter), or None.
FUSED_DEVICE = None if _kernels is None else "cpu" if _kernels.INTERPRETED else "cuda"


def kth_smallest(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of each row: rows [R, L] -> [R], rows' dtype.

    The smallest of the L - k + 1 largest or the largest of the k smallest, by ``torch.topk``,
    whichever asks for fewer (on CUDA a multi-block radix selection; ``torch.kthvalue`` runs one
    block per row).  docs/performance.md compares them (``python -m gtp_ref.bench threshold``).
    """
    L = rows.shape[-1]
    if k <= L - k + 1:
        return rows.topk(k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)
    return rows.topk(L - k + 1, dim=-1, largest=True, sorted=False).values.amin(dim=-1)


def sparsify_attention(attn: Tensor, sparsity: float) -> Tensor:
    """``gtp_ref.dense.sparsify_attention`` with the threshold from ``kth_smallest``."""
    return dense_sparsify_attention(attn, sparsity, kth_smallest)


MAX_FUSED_TOKENS = 1024  # the fused softmax holds a whole row of the map in one program


def attend_and_score(block: Block, x: Tensor, token_scales: Tensor | None, sparsity: float, selection: str | None,
                     class_token: bool) -> tuple[Tensor, Tensor | None] | None:
    """A GTP block's attention and the token scores in one fused pass over the attention map.

    x [B, N, C] -> (Attn(LN1 x) [B, N, C], scores [B, n] or None when selection is None),
    the same as ``GTPBlock.attend``'s explicit path (attention with the sparsified map, then
    ``token_scores``); or None where the fused kernels do not apply (see the module docstring)
    -- the caller then takes the explicit path.
    """
    N = x.shape[1]
    if (x.device.type != FUSED_DEVICE or N > MAX_FUSED_TOKENS
            or (selection is not None and selection not in COLUMN_SELECTIONS)):
        return None
    attn = block.attn
    q, k, v = attn.heads(block.norm1(x))  # (B, H, N, d)
    logits = q @ k.transpose(-2, -1)  # (B, H, N, N), autocast's dtype
    log_s = None if token_scales is None else token_scales.log()  # (B, N)
    # softmax runs in float32 under autocast, else in the type promotion of logits and log s
    probs_dtype = (torch.float32 if torch.is_autocast_enabled(x.device.type) else
                   logits.dtype if log_s is None else torch.promote_types(logits.dtype, log_s.dtype))
    probs = _kernels.softmax_rows(logits, attn.scale, log_s, probs_dtype)  # (B, H, N, N)
    tau = head_thresholds(probs, sparsity, kth_smallest)  # (B, H) or None
    masked, col_sums, diagonal = _kernels.mask_and_reduce(probs, tau, v.dtype)
    out = attn.proj(attn.mix(masked, v))
    if selection is None:
        return out, None
    c = prefix_count(class_token)
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
