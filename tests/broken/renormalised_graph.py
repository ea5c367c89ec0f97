"""The next layer's graph renormalised after pruning (the spec keeps Â[K, K] as it is)."""

from gtp_ref.backends import dense
from gtp_ref.backends.dense import *  # noqa: F401,F403
from gtp_ref.graph import normalise


def propagate(x, G, kept, prop, alpha, token_sizes=None, prefix_tokens=True, mode="graph"):
    x, G, s = dense.propagate(x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode)
    return x, None if G is None else normalise((G != 0).to(G.dtype)), s
