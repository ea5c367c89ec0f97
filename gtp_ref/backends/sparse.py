"""The sparse backend: the same op-level API as ``gtp_ref.backends.dense``, scaling with edges, not n^2.

Supplement section A: the token graphs have at most 8 + M edges per node, so they are stored
as edge lists and never as n x n matrices.

* ``token_graph`` generates the spatial edges directly from the grid, finds each row's M-th
  largest cosine similarity by row blocks (``topk`` on a [B, rows, n] block whose size is
  bounded by ``BLOCK_ELEMENTS``), takes the union with the spatial edges by dropping the
  semantic edges that are also spatial (O(E), no sort), and normalises the edge weights.
* ``propagate`` remaps node indices once per layer (kept -> 0..n-P-1, propagated -> -1),
  accumulates ``alpha w x_j`` over the K<-P edges with ``index_add_`` across the whole batch,
  and keeps the K-K edges (with their old weights) as the next layer's graph.  O(E + n C).
* ``select_tokens`` finds the P-th smallest score with ``kthvalue`` (a selection, O(n)), breaks
  ties at that score by index with a cumulative sum, and only sorts the P propagated tokens.

Attention sparsity and token scores work on the dense attention map the model has anyway;
they are the dense reference's.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from gtp_ref._checks import (
    check_graph_input,
    check_propagate_args,
    check_select_input,
    prefix_count,
    renamed_keywords,
)
from gtp_ref.backends import OPS
from gtp_ref.graph import inv_sqrt_degree, semantic_threshold, unit_rows
from gtp_ref.select import sparsify_attention as sparsify_attention  # the reference's ops, re-exported
from gtp_ref.select import token_scores as token_scores

# Largest [B, rows, n] similarity block the semantic graph materialises (elements).
BLOCK_ELEMENTS = 1 << 20
MIN_BLOCK_ROWS = 64


@dataclass
class SparseGraph:
    """A batch of graphs as one edge list: edge e joins row[e] -> col[e] in image batch[e].

    index: [3, E] long, the rows (batch, row, col) of every edge; weight: [E]; shape: (B, n, n).
    Â[b, i, j] = weight of the edge (b, i, j), 0 where there is none; no edge appears twice.
    """

    index: Tensor
    weight: Tensor
    shape: tuple[int, int, int]

    batch = property(lambda self: self.index[0])
    row = property(lambda self: self.index[1])
    col = property(lambda self: self.index[2])

    @property
    def num_edges(self) -> int:
        return self.weight.numel()


def to_dense(G: SparseGraph) -> Tensor:
    """SparseGraph -> Â [B, n, n] (for tests and inspection; the backend never does this)."""
    out = torch.zeros(G.shape, dtype=G.weight.dtype, device=G.weight.device)
    out[G.batch, G.row, G.col] = G.weight
    return out


@lru_cache(maxsize=64)
def spatial_edges(grid: tuple[int, int], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The 8-neighbour edges of an h x w grid, generated directly: (row, col) [E_s] each.

    A pure function of the grid, cached (the tensors are never modified in place).
    """
    h, w = grid
    r = torch.arange(h, device=device)[:, None].expand(h, w).reshape(-1)  # (n,)
    c = torch.arange(w, device=device)[None, :].expand(h, w).reshape(-1)  # (n,)
    rows, cols = [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            ok = (r + dr >= 0) & (r + dr < h) & (c + dc >= 0) & (c + dc < w)  # (n,)
            i = torch.nonzero(ok).squeeze(1)
            rows.append(i)
            cols.append(i + dr * w + dc)
    return torch.cat(rows), torch.cat(cols)


def similarity_blocks(x_img: Tensor, block_elements: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield (r0, K) for row blocks: K [B, rb, n] = cosine similarities of rows r0..r0+rb-1 with
    every token, the token itself set to -inf.  At most ``block_elements`` (default
    ``BLOCK_ELEMENTS``) similarities exist at once, but never fewer than MIN_BLOCK_ROWS rows.
    """
    B, n, _ = x_img.shape
    x_hat = unit_rows(x_img)  # (B, n, C), as in graph.cosine_similarity
    budget = BLOCK_ELEMENTS if block_elements is None else block_elements
    rows_per_block = max(MIN_BLOCK_ROWS, budget // max(1, B * n))
    for r0 in range(0, n, rows_per_block):
        r1 = min(n, r0 + rows_per_block)
        K = x_hat[:, r0:r1] @ x_hat.transpose(-2, -1)  # (B, rb, n)
        own = torch.arange(r0, r1, device=x_img.device)
        K[:, own - r0, own] = float("-inf")  # never its own neighbour
        yield r0, K


def semantic_edges(
    x_img: Tensor, num_neighbours: int, block_elements: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Edges (batch, row, col) of E: j != i and K_ij >= T_i, T_i the M-th largest off-diagonal."""
    M = num_neighbours
    empty = torch.empty(0, dtype=torch.long, device=x_img.device)
    if M == 0:
        return empty, empty, empty
    out_b, out_i, out_j = [], [], []
    for r0, K in similarity_blocks(x_img, block_elements):
        T = semantic_threshold(K, M)  # (B, rb, 1): M-th largest per row
        b, i, j = torch.nonzero((K >= T) & (K > float("-inf")), as_tuple=True)
        out_b.append(b)
        out_i.append(i + r0)
        out_j.append(j)
    return torch.cat(out_b), torch.cat(out_i), torch.cat(out_j)


def token_graph(
    x_img: Tensor, grid: tuple[int, int], graph: str = "mixed", num_neighbours: int = 4
) -> SparseGraph:
    """Â of the image tokens as a SparseGraph: x_img [B, n, C], grid (h, w), h*w = n.

    Same graph as ``gtp_ref.backends.dense.token_graph``: S, E or S or E, then D^-1/2 A D^-1/2 with
    D = row degrees (0 on degree-0 rows), applied to the edge weights.
    """
    grid, n = check_graph_input(x_img, grid, graph, num_neighbours)
    B = x_img.shape[0]
    dev = x_img.device
    bs, rs, cs = [], [], []
    h, w = grid
    if graph in ("spatial", "mixed"):
        i, j = spatial_edges(tuple(grid), dev)
        bs.append(torch.arange(B, device=dev).repeat_interleave(i.numel()))
        rs.append(i.repeat(B))
        cs.append(j.repeat(B))
    if graph in ("semantic", "mixed"):
        b, i, j = semantic_edges(x_img, num_neighbours)
        if graph == "mixed":  # the union: drop semantic edges that are already spatial
            spatial = ((i // w - j // w).abs() <= 1) & ((i % w - j % w).abs() <= 1)
            b, i, j = b[~spatial], i[~spatial], j[~spatial]
        bs.append(b)
        rs.append(i)
        cs.append(j)
    index = torch.stack([torch.cat(bs), torch.cat(rs), torch.cat(cs)])  # (3, E)
    base = index[0] * n
    deg = torch.bincount(base + index[1], minlength=B * n).to(x_img.dtype)  # (B*n,)
    d = inv_sqrt_degree(deg)  # (B*n,)
    weight = d[base + index[1]] * d[base + index[2]]  # A_ij d_i d_j with A_ij = 1
    return SparseGraph(index, weight, (B, n, n))


def select_tokens(scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """scores [B, n] -> (kept [B, n - P] ascending, prop [B, P]); the dense reference's rule.

    The P lowest scores are propagated; at equal scores the larger index goes first.  O(n) per
    image plus a sort of the P propagated tokens (for their order), never of all n.
    """
    P = check_select_input(scores, num_prop)
    B, n = scores.shape
    idx = torch.arange(n, device=scores.device).expand(B, n)
    if P == 0 or B == 0:
        return idx[:, P:].clone(), idx[:, :P].clone()
    t = scores.kthvalue(P, dim=-1, keepdim=True).values  # (B, 1): the P-th smallest score
    # NaN ranks above every number (as in the dense reference's sort) and equals NaN
    below = (scores < t) | (t.isnan() & ~scores.isnan())  # (B, n)
    at = (scores == t) | (scores.isnan() & t.isnan())  # (B, n)
    need = P - below.sum(-1, keepdim=True)  # (B, 1): how many tokens at t are propagated
    from_end = at.flip(-1).cumsum(-1).flip(-1)  # (B, n): # tokens at t with index >= j
    is_prop = below | (at & (from_end <= need))  # (B, n): exactly P per row
    kept = idx.masked_select(~is_prop).view(B, n - P)  # row-major: ascending per image
    prop = idx.masked_select(is_prop).view(B, P).flip(-1)  # descending index
    order = torch.sort(scores.gather(1, prop), dim=-1, stable=True).indices  # only P items
    return kept, prop.gather(1, order)


@renamed_keywords
def propagate(
    x: Tensor,
    G: SparseGraph | None,
    kept: Tensor,
    prop: Tensor,
    alpha: float,
    token_sizes: Tensor | None = None,
    prefix_tokens: bool | int = True,
    mode: str = "graph",
) -> tuple[Tensor, SparseGraph | None, Tensor | None]:
    """Same contract as ``gtp_ref.backends.dense.propagate``, with G a SparseGraph (or None for mean/none).

    graph: x_K[a] += alpha * sum over edges (b, i, j, w) with i = K[a], j in P of w x_j, by one
    ``index_add_`` over the batch's edges; next graph: the K-K edges, renumbered.
    """
    check_propagate_args(x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode, graph_type=SparseGraph)
    c = prefix_count(prefix_tokens)
    B, n, C = x.shape[0], x.shape[1] - c, x.shape[2]
    nk, P = kept.shape[1], prop.shape[1]
    cls = x[:, :c]  # (B, c, C)
    x_img = x[:, c:].reshape(B * n, C)  # (B*n, C): the image tokens of all images, flat
    image_start = torch.arange(B, device=x.device)[:, None] * n  # (B, 1)
    kept_flat = (image_start + kept).reshape(-1)  # (B*(n-P),)
    x_K = x_img.index_select(0, kept_flat)  # (B*(n-P), C)
    s_cls = s_img = s_K = None
    if token_sizes is not None:
        s_cls, s_img = token_sizes[:, :c], token_sizes[:, c:].reshape(B * n)
        s_K = s_img.index_select(0, kept_flat)  # (B*(n-P),)

    G_next = None
    if G is not None:
        new = torch.full((B * n,), -1, dtype=torch.long, device=x.device)  # flat old -> new, -1: gone
        new[kept_flat] = torch.arange(nk, device=x.device).repeat(B)
        ends = G.index[0] * n + G.index[1:]  # (2, E): flat row and column of every edge
        i_new, j_new = new.index_select(0, ends.reshape(-1)).view(2, -1)  # (E,) each
        renumbered = torch.stack([G.index[0], i_new, j_new])  # (3, E)
        if mode == "graph":
            kp = ((i_new >= 0) & (j_new < 0)).nonzero().squeeze(1)  # the Â[K, P] edges
            b, a, _ = renumbered.index_select(1, kp)  # image, row of x_K
            dst, src = b * nk + a, ends[1].index_select(0, kp)  # flat x_K row <- flat x_P token
            w = alpha * G.weight.index_select(0, kp)  # (E_KP,)
            x_K = x_K.index_add(0, dst, w[:, None] * x_img.index_select(0, src))  # += alpha Â[K,P] x_P
            if s_K is not None:
                s_K = s_K.index_add(0, dst, w * s_img.index_select(0, src))  # += alpha Â[K,P] s_P
        kk = ((i_new >= 0) & (j_new >= 0)).nonzero().squeeze(1)  # the Â[K, K] edges
        n_next = nk + (1 if mode == "mean" and P > 0 else 0)  # the mean token has no edges
        G_next = SparseGraph(
            renumbered.index_select(1, kk), G.weight.index_select(0, kk), (B, n_next, n_next)
        )

    x_K = x_K.view(B, nk, C)
    s_K = None if s_K is None else s_K.view(B, nk)
    if mode == "mean" and P > 0:
        prop_flat = (image_start + prop).reshape(-1)  # (B*P,)
        x_K = torch.cat([x_K, x_img[prop_flat].view(B, P, C).mean(dim=1, keepdim=True)], dim=1)
        if s_K is not None:
            s_K = torch.cat([s_K, s_img[prop_flat].view(B, P).sum(dim=1, keepdim=True)], dim=1)

    x = torch.cat([cls, x_K], dim=1)
    scales = None if s_K is None else torch.cat([s_cls, s_K], dim=1)
    return x, G_next, scales


__all__ = [*OPS, "SparseGraph"]
