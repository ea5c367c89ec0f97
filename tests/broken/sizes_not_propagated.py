"""Token sizes not propagated: s_K stays as it was."""

from gtp_ref.backends import dense
from gtp_ref.backends.dense import *  # noqa: F401,F403


def propagate(x, G, kept, prop, alpha, token_sizes=None, prefix_tokens=True, mode="graph"):
    out, G2, s = dense.propagate(
        x,
        G,
        kept,
        prop,
        alpha,
        token_sizes,
        prefix_tokens,
        "none" if mode == "graph" and token_sizes is not None else mode,
    )
    if mode == "graph" and token_sizes is not None:
        out = dense.propagate(x, G, kept, prop, alpha, None, prefix_tokens, mode)[0]
    return out, G2, s
