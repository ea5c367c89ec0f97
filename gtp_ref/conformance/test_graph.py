"""Spec section 2: the token graph Â (spatial, semantic, mixed; normalisation)."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref.conformance.harness import assert_close, assert_equal, assert_shape, call, load_impl, oracle
from gtp_ref.conformance.strategies import grids, tensors
from gtp_ref.diagnostics import semantic_margin

impl = load_impl()
GRAPHS = ["spatial", "semantic", "mixed"]


@st.composite
def graph_inputs(draw, ties=False, max_side=10):
    grid = draw(grids(max_side=max_side))
    n = grid[0] * grid[1]
    x = draw(tensors((draw(st.integers(1, 3)), n, draw(st.integers(2, 6))), ties=ties))
    M = draw(st.one_of(st.just(0), st.just(n - 1), st.integers(0, n - 1)))
    return x, grid, draw(st.sampled_from(GRAPHS)), M


def dense_graph(x, grid, graph, M):
    return impl.to_dense(impl.token_graph(x, grid, graph, M))


@given(graph_inputs())
def test_token_graph_matches_the_reference(inputs):
    """Â, entry by entry (continuous tokens; draws whose top-M is decided by rounding are skipped)."""
    x, grid, graph, M = inputs
    assume(graph == "spatial" or semantic_margin(x, M) > 1e-9)
    want = oracle.token_graph(x, grid, graph, M)
    assert_close(
        call("token_graph", x_img=x, grid=grid, graph=graph, num_neighbours=M),
        dense_graph(x, grid, graph, M),
        want,
        rtol=1e-9,
        atol=1e-12,
        test="test_token_graph_matches",
    )


@given(grids(max_side=12))
def test_spatial_degrees_are_3_5_8(grid):
    h, w = grid
    x = torch.randn(1, h * w, 3, dtype=torch.float64)
    A = (torch.as_tensor(dense_graph(x, grid, "spatial", 0)) != 0).to(torch.int64)[0]
    want = (oracle.token_graph(x, grid, "spatial", 0) != 0).to(torch.int64)[0]
    assert_equal(
        call("token_graph", grid=grid, graph="spatial") + " edge pattern (8-neighbours, "
        "degrees 3/5/8 at corners/edges/interior)",
        A,
        want,
        test="test_spatial_degrees",
    )


@st.composite
def axis_tokens(draw):
    """Tokens along coordinate axes, scaled by powers of two: every cosine similarity is exactly
    -1, 0 or 1 in any floating-point implementation, so exact ties are the same everywhere."""
    n, C = draw(st.integers(2, 16)), draw(st.integers(1, 4))
    x = torch.zeros(1, n, C, dtype=torch.float64)
    for i in range(n):
        x[0, i, draw(st.integers(0, C - 1))] = draw(st.sampled_from([-2.0, -1.0, 0.5, 1.0, 4.0]))
    return x, draw(st.integers(0, n - 1))


@given(axis_tokens())
def test_semantic_ties_keep_every_token_at_the_threshold(inputs):
    """E_ij = 1 iff K_ij >= T_i: on exact ties a row gets more than M neighbours."""
    x, M = inputs
    n = x.shape[1]
    got = torch.as_tensor(dense_graph(x, (1, n), "semantic", M)) != 0
    want = oracle.token_graph(x, (1, n), "semantic", M) != 0
    assert_equal(
        call("token_graph", x_img=x, grid=(1, n), graph="semantic", num_neighbours=M)
        + f" edge pattern with exact ties (tokens {x[0].tolist()})",
        got,
        want,
        test="test_semantic_ties",
    )


@given(graph_inputs())
def test_no_nan_from_degree_zero_or_zero_norm(inputs):
    x, grid, graph, M = inputs
    x = x.clone()
    x[:, 0] = 0.0  # a zero-norm token
    G = torch.as_tensor(dense_graph(x, grid, graph, M))
    what = call("token_graph", x_img=x, grid=grid, graph=graph, num_neighbours=M)
    assert_shape(
        what + " -> to_dense", G, (x.shape[0], x.shape[1], x.shape[1]), test="test_no_nan_from_degree_zero"
    )
    assert torch.isfinite(G).all(), (
        what + " returned NaN/inf (degree-0 rows get D^-1/2 = 0; a zero-norm token has cosine 0)"
    )


@pytest.mark.parametrize(
    "kwargs",
    [dict(graph="knn"), dict(num_neighbours=6), dict(grid=(2, 2))],
    ids=["unknown-graph", "M>=n", "grid-mismatch"],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = dict(grid=(2, 3), graph="semantic", num_neighbours=2) | kwargs
    with pytest.raises(ValueError):
        impl.token_graph(torch.randn(1, 6, 3, dtype=torch.float64), **args)
