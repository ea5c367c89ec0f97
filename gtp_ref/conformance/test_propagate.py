"""Spec section 3.5: graph / mean / none propagation, token sizes, the next graph Â[K, K]."""

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref.conformance.harness import assert_close, assert_equal, assert_shape, call, load_impl, oracle
from gtp_ref.conformance.strategies import tensors
from gtp_ref.diagnostics import semantic_margin

impl = load_impl()


@st.composite
def layers(draw):
    prefix_tokens = draw(st.booleans())
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    B, n, C = draw(st.integers(1, 3)), h * w, draw(st.integers(2, 5))
    x = draw(tensors((B, n + int(prefix_tokens), C), ties=False))
    graph = draw(st.sampled_from(["spatial", "semantic", "mixed"]))
    M = draw(st.integers(0, n - 1))
    P = draw(st.integers(0, n - 1))
    kept, prop = oracle.select_tokens(draw(tensors((B, n), ties=False)), P)
    sizes = None
    if draw(st.booleans()):
        sizes = draw(tensors((B, n + int(prefix_tokens)), ties=True, low=1, high=4))
        if prefix_tokens:
            sizes[:, 0] = 1.0
    return dict(
        x=x,
        grid=(h, w),
        graph=graph,
        M=M,
        kept=kept,
        prop=prop,
        sizes=sizes,
        prefix_tokens=prefix_tokens,
        mode=draw(st.sampled_from(["graph", "mean", "none"])),
        alpha=draw(st.floats(0, 1)),
    )


@given(layers())
def test_propagate_matches_the_reference(case):
    c = int(case["prefix_tokens"])
    x_img = case["x"][:, c:]
    assume(case["graph"] == "spatial" or semantic_margin(x_img, case["M"]) > 1e-9)
    args = (case["kept"], case["prop"], case["alpha"], case["sizes"], case["prefix_tokens"], case["mode"])
    G = impl.token_graph(x_img, case["grid"], case["graph"], case["M"])
    x2, G2, s2 = impl.propagate(case["x"], G, *args)
    wx, wG, ws = oracle.propagate(
        case["x"], oracle.token_graph(x_img, case["grid"], case["graph"], case["M"]), *args
    )
    what = call(
        "propagate",
        x=case["x"],
        kept=case["kept"],
        prop=case["prop"],
        alpha=case["alpha"],
        token_sizes=case["sizes"],
        prefix_tokens=case["prefix_tokens"],
        mode=case["mode"],
    )
    assert_close(what + " -> x", x2, wx, rtol=1e-9, atol=1e-12, test="test_propagate_matches")
    assert_close(
        what + " -> next graph Â[K, K] (not renormalised)",
        impl.to_dense(G2),
        wG,
        rtol=1e-9,
        atol=1e-12,
        test="test_propagate_matches",
    )
    if ws is not None:
        assert_close(what + " -> token sizes", s2, ws, rtol=1e-9, atol=1e-12, test="test_propagate_matches")
    if c:
        assert_equal(
            what + " -> [CLS] must not change",
            torch.as_tensor(x2)[:, 0],
            case["x"][:, 0],
            test="test_propagate_matches",
        )


@given(layers())
def test_alpha_zero_is_pruning(case):
    c = int(case["prefix_tokens"])
    G = impl.token_graph(case["x"][:, c:], case["grid"], case["graph"], case["M"])
    rest = (case["sizes"], case["prefix_tokens"])
    a = impl.propagate(case["x"], G, case["kept"], case["prop"], 0.0, *rest, "graph")
    b = impl.propagate(case["x"], G, case["kept"], case["prop"], 0.0, *rest, "none")
    B, N, C = case["x"].shape
    assert_shape(
        "propagate(mode='graph', alpha=0) -> x",
        a[0],
        (B, N - case["prop"].shape[1], C),
        test="test_alpha_zero_is_pruning",
    )
    assert_close(
        "propagate(mode='graph', alpha=0) vs mode='none'",
        a[0],
        torch.as_tensor(b[0]).to(case["x"].dtype),
        rtol=0,
        atol=0,
        test="test_alpha_zero_is_pruning",
    )
