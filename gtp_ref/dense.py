"""The dense backend: the readable reference every other implementation is checked against.

Its graph is the normalised adjacency Â itself, a [B, n, n] tensor.
"""
from torch import Tensor

from gtp_ref.backends import Backend
from gtp_ref.graph import token_graph
from gtp_ref.propagate import propagate
from gtp_ref.select import select_tokens, sparsify_attention, token_scores


def to_dense(G: Tensor) -> Tensor:
    """The dense backend's graph is already dense: [B, n, n] -> [B, n, n] (identity)."""
    return G


BACKEND = Backend("dense", token_graph, to_dense, sparsify_attention, token_scores, select_tokens, propagate)


__all__ = ["token_graph", "to_dense", "sparsify_attention", "token_scores", "select_tokens",
           "propagate"]
