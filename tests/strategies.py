"""Shared hypothesis strategies: tiny and rectangular grids, ties, edge values."""
import torch
from hypothesis import strategies as st

from gtp_ref._checks import SELECTIONS

DTYPES = (torch.float32, torch.float64)


@st.composite
def grids(draw, max_side=8):
    """(h, w): reaches 1x1, 1xk, kx1, squares and rectangles."""
    return draw(st.integers(1, max_side)), draw(st.integers(1, max_side))


@st.composite
def tensors(draw, shape, ties=None, dtype=torch.float64, low=-3, high=3):
    """A tensor of ``shape``: integer-valued (many exact ties) or continuous, by ``ties``."""
    ties = draw(st.booleans()) if ties is None else ties
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if ties:
        return torch.randint(low, high + 1, shape, generator=g).to(dtype)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)


@st.composite
def attention_maps(draw, ties=None, class_token=None, max_tokens=10, max_heads=3):
    """(attn [B, H, N, N] row-stochastic, class_token), optionally with many exact ties."""
    class_token = draw(st.booleans()) if class_token is None else class_token
    B, H = draw(st.integers(1, 3)), draw(st.integers(1, max_heads))
    N = draw(st.integers(1 + int(class_token), max_tokens))
    ties = draw(st.booleans()) if ties is None else ties
    if ties:  # integer weights, normalised: equal weights give bit-equal probabilities
        w = draw(tensors((B, H, N, N), ties=True, low=0, high=3))
        w[w.sum(-1) == 0] = 1.0
        return w / w.sum(-1, keepdim=True), class_token
    return draw(tensors((B, H, N, N), ties=False)).softmax(-1), class_token


selections = st.sampled_from(SELECTIONS)


def cut_gaps(trace):
    """Per block and image: (smallest kept score - largest propagated score) / score scale."""
    for layer in trace.layers:
        if layer.prop is None or layer.prop.shape[1] == 0 or layer.kept.shape[1] == 0:
            continue
        s = layer.scores
        gap = s.gather(1, layer.kept).amin(1) - s.gather(1, layer.prop).amax(1)  # (B,)
        yield gap / s.abs().amax(1).clamp_min(1.0)


def near_tie_at_cut(*traces, tol=1e-9):
    """True if some selection cut is decided by a gap in (0, tol): rounding may flip it."""
    return any(((g > 0) & (g < tol)).any() for t in traces for g in cut_gaps(t))
