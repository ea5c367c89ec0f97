"""Token sizes not propagated: s_K stays as it was."""
from gtp_ref.backends import dense
from gtp_ref.backends.dense import *  # noqa: F401,F403


def propagate(x, G, kept, prop, alpha, token_scales=None, class_token=True, mode="graph"):
    out, G2, s = dense.propagate(x, G, kept, prop, alpha, token_scales, class_token,
                                 "none" if mode == "graph" and token_scales is not None else mode)
    if mode == "graph" and token_scales is not None:
        out = dense.propagate(x, G, kept, prop, alpha, None, class_token, mode)[0]
    return out, G2, s
