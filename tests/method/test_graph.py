"""Token graph (spec section 2): spatial, semantic, mixed and the normalisation."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gtp_ref.backends import dense
from gtp_ref.graph import cosine_similarity, normalise, semantic_graph, spatial_graph
from tests.helpers import grids, tensors


def expected_degree(r, c, h, w):
    return (min(r + 1, h - 1) - max(r - 1, 0) + 1) * (min(c + 1, w - 1) - max(c - 1, 0) + 1) - 1


@given(grids(max_side=12))
def test_spatial_degrees(grid):
    h, w = grid
    S = spatial_graph(grid)
    assert torch.equal(S, S.T), "the spatial graph is symmetric"
    assert S.diagonal().sum() == 0, "no self-loops"
    deg = S.sum(1).reshape(h, w)
    for r in range(h):
        for c in range(w):
            assert deg[r, c] == expected_degree(r, c, h, w), (grid, r, c)
            if h >= 2 and w >= 2:
                on_row_edge, on_col_edge = r in (0, h - 1), c in (0, w - 1)
                want = 3 if on_row_edge and on_col_edge else 5 if on_row_edge or on_col_edge else 8
                assert deg[r, c] == want, f"{grid=} cell {(r, c)}: degree {deg[r, c]}, want {want}"


@given(grids(max_side=6), st.data())
def test_spatial_edges_are_8_neighbours(grid, data):
    h, w = grid
    S = spatial_graph(grid)
    i, j = data.draw(st.integers(0, h * w - 1)), data.draw(st.integers(0, h * w - 1))
    near = i != j and abs(i // w - j // w) <= 1 and abs(i % w - j % w) <= 1
    assert S[i, j] == near, (grid, i, j)


@st.composite
def image_tokens(draw, ties=None, max_n=12):
    # C = 1 makes every cosine +-1 (all ties): only where ties are wanted.
    B, n, C = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, max_n)),
        draw(st.integers(1 if ties is not False else 2, 5)),
    )
    return draw(tensors((B, n, C), ties=ties))


@given(image_tokens(ties=False), st.data())
def test_semantic_rows_have_exactly_M_edges_without_ties(x, data):
    n = x.shape[1]
    M = data.draw(st.integers(0, n - 1))
    E = semantic_graph(x, M)
    assert (E.diagonal(dim1=-2, dim2=-1) == 0).all(), "never a self-loop"
    assert (E.sum(-1) == M).all(), f"{M=}: row degrees {E.sum(-1).tolist()}"


@given(image_tokens(ties=True), st.data())
def test_semantic_threshold_rule_with_ties(x, data):
    """E_ij = 1 iff j != i and K_ij >= the M-th largest of row i's off-diagonal similarities."""
    B, n, _ = x.shape
    M = data.draw(st.integers(0, n - 1))
    E = semantic_graph(x, M)
    K = cosine_similarity(x)
    for b in range(B):
        for i in range(n):
            others = sorted((K[b, i, j].item() for j in range(n) if j != i), reverse=True)
            for j in range(n):
                want = M > 0 and j != i and K[b, i, j].item() >= others[M - 1]
                assert E[b, i, j] == want, f"{M=} b={b} i={i} j={j} K={K[b, i].tolist()}"
            assert E[b, i].sum() >= M


def test_zero_norm_tokens_give_no_nan():
    x = torch.zeros(1, 4, 3, dtype=torch.float64)
    x[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    G = dense.token_graph(x, (2, 2), "semantic", 2)
    assert torch.isfinite(G).all()
    assert torch.equal(cosine_similarity(x)[0, 1], torch.zeros(4, dtype=torch.float64))


@given(image_tokens(), st.data())
def test_normalisation_is_the_formula(x, data):
    B, n, _ = x.shape
    A = semantic_graph(x, data.draw(st.integers(0, n - 1)))
    A_hat = normalise(A)
    deg = A.sum(-1)
    assert torch.isfinite(A_hat).all()
    for b in range(B):
        for i in range(n):
            for j in range(n):
                d = deg[b, i] * deg[b, j]
                want = 0.0 if d == 0 else A[b, i, j].item() / math.sqrt(d)
                assert A_hat[b, i, j].item() == pytest.approx(want, rel=1e-12, abs=0), (b, i, j)


@given(grids(max_side=6), st.integers(1, 3))
def test_normalised_graph_is_symmetric_when_A_is(grid, B):
    x = torch.randn(B, grid[0] * grid[1], 4, dtype=torch.float64)
    G = dense.token_graph(x, grid, "spatial")
    assert torch.allclose(G, G.transpose(-2, -1), rtol=0, atol=1e-15)
    A = torch.randint(0, 2, (B, 6, 6)).double()
    A = torch.maximum(A, A.transpose(-2, -1))
    assert torch.equal(normalise(A), normalise(A).transpose(-2, -1))


@given(grids(max_side=5), st.data())
def test_mixed_is_spatial_or_semantic(grid, data):
    n = grid[0] * grid[1]
    x = data.draw(tensors((2, n, 3)))
    M = data.draw(st.integers(0, n - 1))
    A = torch.maximum(spatial_graph(grid, dtype=x.dtype), semantic_graph(x, M))
    assert torch.equal(dense.token_graph(x, grid, "mixed", M), normalise(A))


def test_degree_zero_rows_are_zero_not_nan():
    x = torch.randn(2, 6, 3)
    G = dense.token_graph(x, (2, 3), "semantic", 0)
    assert torch.equal(G, torch.zeros_like(G))
    G = dense.token_graph(torch.randn(1, 1, 3), (1, 1), "spatial")  # a single patch: no neighbour
    assert torch.equal(G, torch.zeros(1, 1, 1))


@given(image_tokens(ties=False), st.data())
def test_semantic_graph_is_permutation_equivariant(x, data):
    n = x.shape[1]
    M = data.draw(st.integers(0, n - 1))
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    G = dense.token_graph(x, (1, n), "semantic", M)
    Gp = dense.token_graph(x[:, perm], (1, n), "semantic", M)
    assert torch.allclose(Gp, G[:, perm][:, :, perm], rtol=1e-12, atol=1e-15)
