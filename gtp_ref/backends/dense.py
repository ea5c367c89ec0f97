"""The dense backend: the readable reference every other implementation is checked against.

Its ops are the method's stages as plain matrix algebra, one module each: ``gtp_ref.graph``,
``gtp_ref.select`` and ``gtp_ref.propagate``.

Its graph is the normalised adjacency Â itself, a [B, n, n] tensor.
"""
from torch import Tensor

from gtp_ref.backends import OPS
from gtp_ref.graph import token_graph
from gtp_ref.propagate import propagate
from gtp_ref.select import select_tokens, sparsify_attention, token_scores


def to_dense(G: Tensor) -> Tensor:
    """The dense backend's graph is already dense: [B, n, n] -> [B, n, n] (identity)."""
    return G


__all__ = list(OPS)
