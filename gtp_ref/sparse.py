"""The sparse backend: the same op-level API as ``gtp_ref.dense``, scaling with edges, not n^2.

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
from dataclasses import dataclass

import torch

from gtp_ref._checks import GRAPHS, check_grid, check_num_neighbours, choice, PROPAGATIONS, check_alpha
from gtp_ref.graph import cosine_similarity, inv_sqrt_degree
from gtp_ref.select import sparsify_attention, token_scores

# Largest [B, rows, n] similarity block the semantic graph materialises (elements).
BLOCK_ELEMENTS = 1 << 20
MIN_BLOCK_ROWS = 64


@dataclass
class SparseGraph:
    """A batch of graphs as one edge list: edge e joins row[e] -> col[e] in image batch[e].

    batch, row, col: [E] long; weight: [E]; shape: (B, n, n).  Â[b, i, j] = weight of the edge
    (b, i, j), 0 where there is none; no edge appears twice.
    """

    batch: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    weight: torch.Tensor
    shape: tuple

    @property
    def num_edges(self):
        return self.row.numel()


def to_dense(G):
    """SparseGraph -> Â [B, n, n] (for tests and inspection; the backend never does this)."""
    out = torch.zeros(G.shape, dtype=G.weight.dtype, device=G.weight.device)
    out[G.batch, G.row, G.col] = G.weight
    return out


def spatial_edges(grid, device=None):
    """The 8-neighbour edges of an h x w grid, generated directly: (row, col) [E_s] each."""
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


def similarity_blocks(x_img, block_elements=None):
    """Yield (r0, K) for row blocks: K [B, rb, n] = cosine similarities of rows r0..r0+rb-1 with
    every token, the token itself set to -inf.  At most ``block_elements`` (default
    ``BLOCK_ELEMENTS``) similarities exist at once, but never fewer than MIN_BLOCK_ROWS rows.
    """
    B, n, _ = x_img.shape
    norm = x_img.norm(dim=-1, keepdim=True)
    x_hat = torch.where(norm > 0, x_img / norm.clamp_min(torch.finfo(x_img.dtype).tiny),
                        torch.zeros_like(x_img))  # (B, n, C), as in graph.cosine_similarity
    budget = BLOCK_ELEMENTS if block_elements is None else block_elements
    rows_per_block = max(MIN_BLOCK_ROWS, budget // max(1, B * n))
    for r0 in range(0, n, rows_per_block):
        r1 = min(n, r0 + rows_per_block)
        K = x_hat[:, r0:r1] @ x_hat.transpose(-2, -1)  # (B, rb, n)
        own = torch.arange(r0, r1, device=x_img.device)
        K[:, own - r0, own] = float("-inf")  # never its own neighbour
        yield r0, K


def semantic_edges(x_img, num_neighbours, block_elements=None):
    """Edges (batch, row, col) of E: j != i and K_ij >= T_i, T_i the M-th largest off-diagonal."""
    M = num_neighbours
    empty = torch.empty(0, dtype=torch.long, device=x_img.device)
    if M == 0:
        return empty, empty, empty
    out_b, out_i, out_j = [], [], []
    for r0, K in similarity_blocks(x_img, block_elements):
        T = K.topk(M, dim=-1).values[..., -1:]  # (B, rb, 1): M-th largest per row
        b, i, j = torch.nonzero((K >= T) & (K > float("-inf")), as_tuple=True)
        out_b.append(b)
        out_i.append(i + r0)
        out_j.append(j)
    return torch.cat(out_b), torch.cat(out_i), torch.cat(out_j)


def token_graph(x_img, grid, graph="mixed", num_neighbours=4):
    """Â of the image tokens as a SparseGraph: x_img [B, n, C], grid (h, w), h*w = n.

    Same graph as ``gtp_ref.dense.token_graph``: S, E or S or E, then D^-1/2 A D^-1/2 with
    D = row degrees (0 on degree-0 rows), applied to the edge weights.
    """
    choice("graph", graph, GRAPHS)
    B, n, _ = x_img.shape
    check_grid(grid, n)
    dev = x_img.device
    bs, rs, cs = [], [], []
    h, w = grid
    if graph in ("spatial", "mixed"):
        i, j = spatial_edges(grid, dev)
        bs.append(torch.arange(B, device=dev).repeat_interleave(i.numel()))
        rs.append(i.repeat(B))
        cs.append(j.repeat(B))
    if graph in ("semantic", "mixed"):
        check_num_neighbours(num_neighbours, n)
        b, i, j = semantic_edges(x_img, num_neighbours)
        if graph == "mixed":  # the union: drop semantic edges that are already spatial
            spatial = ((i // w - j // w).abs() <= 1) & ((i % w - j % w).abs() <= 1)
            b, i, j = b[~spatial], i[~spatial], j[~spatial]
        bs.append(b)
        rs.append(i)
        cs.append(j)
    batch, row, col = torch.cat(bs), torch.cat(rs), torch.cat(cs)
    deg = torch.bincount(batch * n + row, minlength=B * n).to(x_img.dtype).view(B, n)  # (B, n)
    d = inv_sqrt_degree(deg)  # (B, n)
    weight = d[batch, row] * d[batch, col]  # A_ij d_i d_j with A_ij = 1
    return SparseGraph(batch, row, col, weight, (B, n, n))


def select_tokens(scores, num_prop):
    """scores [B, n] -> (kept [B, n - P] ascending, prop [B, P]); the dense reference's rule.

    The P lowest scores are propagated; at equal scores the larger index goes first.  O(n) per
    image plus a sort of the P propagated tokens (for their order), never of all n.
    """
    B, n = scores.shape
    P = num_prop
    if not 0 <= P <= n:
        raise ValueError(f"num_prop={P} must be in [0, {n}] for {n} image tokens")
    idx = torch.arange(n, device=scores.device).expand(B, n)
    if P == 0:
        return idx.clone(), idx[:, :0].clone()
    t = scores.kthvalue(P, dim=-1, keepdim=True).values  # (B, 1): the P-th smallest score
    below, at = scores < t, scores == t  # (B, n)
    need = P - below.sum(-1, keepdim=True)  # (B, 1): how many tokens at t are propagated
    from_end = at.flip(-1).cumsum(-1).flip(-1)  # (B, n): # tokens at t with index >= j
    is_prop = below | (at & (from_end <= need))  # (B, n): exactly P per row
    kept = _compact(idx, ~is_prop, n - P)  # (B, n-P) ascending
    prop = _compact(idx.flip(-1), is_prop.flip(-1), P)  # (B, P), descending index
    order = torch.sort(scores.gather(1, prop), dim=-1, stable=True).indices  # only P items
    return kept, prop.gather(1, order)


def _compact(values, mask, k):
    """values[b][mask[b]] for every row b, each of exactly k entries, in order: [B, k]."""
    B, n = values.shape
    slot = torch.where(mask, mask.cumsum(-1) - 1, torch.full_like(values, k))  # k = discard
    out = values.new_empty(B, k + 1)
    out.scatter_(1, slot, values)
    return out[:, :k]


def propagate(x, G, kept, prop, alpha, token_scales=None, class_token=True, mode="graph"):
    """Same contract as ``gtp_ref.dense.propagate``, with G a SparseGraph (or None for mean/none).

    graph: x_K[a] += alpha * sum over edges (b, i, j, w) with i = K[a], j in P of w x_j, by one
    ``index_add_`` over the batch's edges; next graph: the K-K edges, renumbered.
    """
    choice("propagation", mode, PROPAGATIONS)
    check_alpha(alpha)
    if mode == "graph" and G is None:
        raise ValueError("propagation='graph' needs the token graph G, got None")
    c = int(class_token)
    B, n = x.shape[0], x.shape[1] - c
    nk, P = kept.shape[1], prop.shape[1]
    cls, x_img = x[:, :c], x[:, c:]
    ar = torch.arange(B, device=x.device)[:, None]
    x_K = x_img[ar, kept]  # (B, n-P, C)
    s_cls = s_K = s_img = None
    if token_scales is not None:
        s_cls, s_img = token_scales[:, :c], token_scales[:, c:]
        s_K = s_img[ar, kept]  # (B, n-P)

    G_next = None
    if G is not None:
        new = torch.full((B, n), -1, dtype=torch.long, device=x.device)  # old -> new index
        new[ar, kept] = torch.arange(nk, device=x.device)
        r_new, c_new = new[G.batch, G.row], new[G.batch, G.col]  # (E,)
        if mode == "graph":
            e = (r_new >= 0) & (c_new < 0)  # kept <- not kept: the Â[K, P] edges
            eb, er, ec, ew = G.batch[e], r_new[e], G.col[e], alpha * G.weight[e]
            flat = eb * nk + er  # (E_KP,) rows of x_K flattened over the batch
            x_K = x_K.reshape(B * nk, -1).index_add(
                0, flat, ew[:, None] * x_img[eb, ec]).view(B, nk, -1)
            if s_K is not None:
                s_K = s_K.reshape(-1).index_add(0, flat, ew * s_img[eb, ec]).view(B, nk)
        keep = (r_new >= 0) & (c_new >= 0)  # the Â[K, K] edges
        n_next = nk + (1 if mode == "mean" and P > 0 else 0)
        G_next = SparseGraph(G.batch[keep], r_new[keep], c_new[keep], G.weight[keep], (B, n_next, n_next))

    if mode == "mean" and P > 0:
        x_K = torch.cat([x_K, x_img[ar, prop].mean(dim=1, keepdim=True)], dim=1)
        if s_K is not None:
            s_K = torch.cat([s_K, s_img[ar, prop].sum(dim=1, keepdim=True)], dim=1)

    x = torch.cat([cls, x_K], dim=1)
    scales = None if s_K is None else torch.cat([s_cls, s_K], dim=1)
    return x, G_next, scales


__all__ = ["token_graph", "to_dense", "sparsify_attention", "token_scores", "select_tokens",
           "propagate", "SparseGraph"]
