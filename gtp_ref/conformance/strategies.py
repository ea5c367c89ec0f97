"""Shared hypothesis strategies of the conformance suite (and the project's own tests):
tiny and rectangular grids, exact ties, edge values."""

from typing import Any

import torch
from hypothesis import strategies as st

from gtp_ref._checks import SELECTIONS

DTYPES = (torch.float32, torch.float64)
# Below this relative gap a decision counts as a near tie: far above rounding (float64 ulp
# 2e-16, float32 6e-8 relative), far below what separates genuinely different values.
NEAR_TIE = {torch.float64: 1e-9, torch.float32: 1e-5}


@st.composite
def grids(draw: Any, max_side: int = 8) -> tuple[int, int]:
    """(h, w): reaches 1x1, 1xk, kx1, squares and rectangles."""
    return draw(st.integers(1, max_side)), draw(st.integers(1, max_side))


@st.composite
def tensors(
    draw: Any,
    shape: tuple[int, ...],
    ties: bool | None = None,
    dtype: torch.dtype = torch.float64,
    low: int = -3,
    high: int = 3,
) -> torch.Tensor:
    """A tensor of ``shape``: integer-valued (many exact ties) or continuous, by ``ties``."""
    ties = draw(st.booleans()) if ties is None else ties
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if ties:
        return torch.randint(low, high + 1, shape, generator=g).to(dtype)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)


@st.composite
def attention_maps(
    draw: Any,
    ties: bool | None = None,
    class_token: bool | None = None,
    max_tokens: int = 10,
    max_heads: int = 3,
) -> tuple[torch.Tensor, bool]:
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


@st.composite
def scores_and_P(draw: Any, max_batch: int = 3, max_tokens: int = 16) -> tuple[torch.Tensor, int]:
    """(scores [B, n] integer-valued, so ties abound; P in [0, n])."""
    B, n = draw(st.integers(1, max_batch)), draw(st.integers(1, max_tokens))
    return draw(tensors((B, n), low=0, high=draw(st.integers(0, 4)))), draw(st.integers(0, n))


def near_tie(*traces: Any, tol: float = 1e-9) -> bool:
    """True if some decision of some trace (recorded with record=True) had a non-zero gap < tol.

    Rounding may decide such a draw differently in two correct implementations, or in one
    implementation at two batch sizes; it proves nothing either way.  Exact ties are kept.
    """
    from gtp_ref.diagnostics import margin

    return min(margin(t) for t in traces) < tol
