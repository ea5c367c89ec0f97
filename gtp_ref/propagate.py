"""Token propagation (spec section 3, step 5), dense reference.

x [B, N, C] holds the prefix tokens first (prefix_tokens: True = one [CLS], False = none, or their
number: [CLS] and registers), then the n image tokens; G = Â [B, n, n];
kept [B, n-P] and prop [B, P] index the image tokens; token_sizes [B, N] or None.
"""

import torch
from torch import Tensor

from gtp_ref._checks import check_propagate_args, prefix_count, renamed_keywords


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, n, ...] , idx [B, k] -> x[b, idx[b]]: [B, k, ...]."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def gather_graph(G: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """G [B, n, n], rows [B, r], cols [B, c] -> G[b, rows[b]][:, cols[b]]: [B, r, c]."""
    if G.shape[0] == 0:
        return G.new_empty(0, rows.shape[1], cols.shape[1])
    return torch.stack(
        [
            g.index_select(0, r).index_select(1, c)  # (r, c) per image
            for g, r, c in zip(G, rows, cols)
        ]
    )


@renamed_keywords
def propagate(
    x: Tensor,
    G: Tensor | None,
    kept: Tensor,
    prop: Tensor,
    alpha: float,
    token_sizes: Tensor | None = None,
    prefix_tokens: bool | int = True,
    mode: str = "graph",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Remove the tokens ``prop``; returns (x [B, N', C], G [B, n', n'] or None, token_sizes).

    graph:  x_K <- x_K + alpha Â[K, P] x_P,  s_K <- s_K + alpha Â[K, P] s_P;  next graph Â[K, K]
            (not renormalised; a propagated token without kept neighbours is simply dropped)
    mean:   x_K, then one new token mean(x_P) (size sum(s_P)); the next graph is Â[K, K] with a
            zero row and column for the new token (it has no edges)
    none:   x_K, s_K, Â[K, K]  (plain pruning; graph with alpha = 0 is the same)
    The prefix tokens and their sizes are never changed.  G may be None for
    mean / none, which need no graph; the returned graph is then None too.
    """
    check_propagate_args(x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode, graph_type=torch.Tensor)
    c = prefix_count(prefix_tokens)
    cls, x_img = x[:, :c], x[:, c:]  # (B, c, C), (B, n, C)
    x_K, x_P = gather_tokens(x_img, kept), gather_tokens(x_img, prop)  # (B, n-P, C), (B, P, C)
    s_cls = s_K = s_P = None
    if token_sizes is not None:
        s_cls, s_img = token_sizes[:, :c], token_sizes[:, c:]  # (B, c), (B, n)
        s_K, s_P = gather_tokens(s_img, kept), gather_tokens(s_img, prop)  # (B, n-P), (B, P)
    G_KK = None if G is None else gather_graph(G, kept, kept)  # (B, n-P, n-P)

    if mode == "graph":
        A_KP = gather_graph(G, kept, prop)  # (B, n-P, P)
        x_K = x_K + alpha * (A_KP @ x_P)  # (B, n-P, C)
        if s_K is not None:
            s_K = s_K + alpha * (A_KP @ s_P[..., None])[..., 0]  # (B, n-P)
    elif mode == "mean" and prop.shape[1] > 0:
        x_K = torch.cat([x_K, x_P.mean(dim=1, keepdim=True)], dim=1)  # (B, n-P+1, C)
        if s_K is not None:
            s_K = torch.cat([s_K, s_P.sum(dim=1, keepdim=True)], dim=1)  # (B, n-P+1)
        if G_KK is not None:
            G_KK = torch.nn.functional.pad(G_KK, (0, 1, 0, 1))  # (B, n-P+1, n-P+1)

    x = torch.cat([cls, x_K], dim=1)
    scales = None if s_K is None else torch.cat([s_cls, s_K], dim=1)
    return x, G_KK, scales
