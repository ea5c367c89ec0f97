"""The dense backend: the readable reference every other implementation is checked against.

Its ops are the method's stages as plain matrix algebra, one module each: ``gtp_ref.graph``,
``gtp_ref.select`` and ``gtp_ref.propagate``.

Its graph is the normalised adjacency Â itself, a [B, n, n] tensor.
"""

from torch import Tensor

from gtp_ref.backends import OPS
from gtp_ref.graph import token_graph as token_graph  # the ops, re-exported (``as``: explicitly)
from gtp_ref.propagate import propagate as propagate
from gtp_ref.select import select_tokens as select_tokens
from gtp_ref.select import sparsify_attention as sparsify_attention
from gtp_ref.select import token_scores as token_scores


def to_dense(G: Tensor) -> Tensor:
    """The dense backend's graph is already dense: [B, n, n] -> [B, n, n] (identity)."""
    return G


__all__ = list(OPS)
