"""The sparse backend equals the dense reference (op by op and whole models) and never
materialises an n x n matrix; the fast backend (``gtp_ref.backends.fast``) is held to the same equalities."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from gtp_ref import diagnostics
from gtp_ref.backends import dense, fast, sparse
from gtp_ref.diagnostics import semantic_margin
from gtp_ref.graph import semantic_threshold
from tests.helpers import (
    DTYPES,
    NEAR_TIE,
    build,
    configs,
    grids,
    images_for,
    model_for,
    near_tie,
    official_vectors,
    scores_and_P,
    tensors,
)


def threshold_gap(x_img, M, block_elements=None):
    """Smallest non-zero gap between the M-th and (M+1)-th largest similarity of a row, as the
    dense reference computes K (one product) and as the sparse backend does (row blocks)."""
    n = x_img.shape[1]
    if M == 0 or M >= n - 1:
        return float("inf")
    gaps = [semantic_margin(x_img, M)]
    for _, K in sparse.similarity_blocks(x_img, block_elements):
        gap = diagnostics.threshold_gap(K, semantic_threshold(K, M))
        gaps.append(gap[gap > 0].min().item() if (gap > 0).any() else float("inf"))
    return min(gaps)


@st.composite
def graph_cases(draw, max_side=32):
    grid = draw(grids(max_side=max_side))
    n = grid[0] * grid[1]
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(tensors((B, n, C), dtype=dtype))
    M = draw(st.one_of(st.just(0), st.just(n - 1), st.integers(0, n - 1)))
    return x, grid, draw(st.sampled_from(["spatial", "semantic", "mixed"])), M


@given(graph_cases())
def test_token_graph_equals_dense(case):
    x, grid, graph, M = case
    # Mathematically equal similarities (common with integer inputs) can round differently in
    # one n x n product and in row blocks; only then may the two disagree.
    assume(graph == "spatial" or threshold_gap(x, M) > NEAR_TIE[x.dtype])
    G = sparse.token_graph(x, grid, graph, M)
    keys = (G.batch * x.shape[1] + G.row) * x.shape[1] + G.col
    assert keys.unique().numel() == keys.numel(), "no edge twice"
    assert torch.equal(sparse.to_dense(G), dense.token_graph(x, grid, graph, M)), (grid, graph, M)


@given(graph_cases(max_side=20), st.integers(1, 5000))
def test_blocked_semantic_graph_equals_dense(case, budget):
    """Row blocks of any size (down to MIN_BLOCK_ROWS) give the same edges, barring near ties."""
    x, grid, graph, M = case
    assume(threshold_gap(x, M, budget) > NEAR_TIE[x.dtype])
    b, i, j = sparse.semantic_edges(x, M, block_elements=budget)
    E = torch.zeros(x.shape[0], x.shape[1], x.shape[1], dtype=x.dtype)
    E[b, i, j] = 1
    from gtp_ref.graph import semantic_graph

    assert torch.equal(E, semantic_graph(x, M))


@given(scores_and_P(max_batch=4, max_tokens=40))
def test_select_tokens_equals_dense(case):
    scores, P = case
    kd, pd = dense.select_tokens(scores, P)
    ks, ps = sparse.select_tokens(scores, P)
    assert torch.equal(kd, ks) and torch.equal(pd, ps), (scores.tolist(), P)


BACKENDS = {"sparse": sparse, "fast": fast}


@pytest.mark.parametrize("backend", BACKENDS)
@given(graph_cases(max_side=12), st.data())
def test_propagate_equals_dense(backend, case, data):
    ops = BACKENDS[backend]
    x_img, grid, graph, M = case
    class_token = data.draw(st.booleans())
    B, n, C = x_img.shape
    x = torch.cat([torch.randn(B, int(class_token), C, dtype=x_img.dtype), x_img], 1)
    mode = data.draw(st.sampled_from(["graph", "mean", "none"]))
    P = data.draw(st.integers(0, n - 1))
    kept, prop = dense.select_tokens(data.draw(tensors((B, n))), P)
    s = data.draw(
        st.one_of(st.none(), tensors((B, n + int(class_token)), ties=True, low=1, high=3, dtype=x.dtype))
    )
    alpha = data.draw(st.floats(-1, 1))
    Gd, Gs = dense.token_graph(x_img, grid, graph, M), ops.token_graph(x_img, grid, graph, M)
    xd, Gd2, sd = dense.propagate(x, Gd, kept, prop, alpha, s, class_token, mode)
    xs, Gs2, ss = ops.propagate(x, Gs, kept, prop, alpha, s, class_token, mode)
    tol = dict(rtol=1e-12, atol=1e-12) if x.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(xd, xs, **tol), (grid, graph, M, mode, P)
    assert torch.equal(Gd2, ops.to_dense(Gs2)), "next graph: Â[K, K] exactly"
    assert (sd is None and ss is None) or torch.allclose(sd, ss, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@given(configs(), st.sampled_from(DTYPES), st.booleans())
def test_models_agree(backend, cfg, dtype, ties):
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_mean"
    x = images_for(cfg, 2, dtype=dtype, ties=ties)
    with torch.no_grad():
        td = build(cfg, dtype=dtype).forward_trace(x, record=True)
        ts = build({**cfg, "backend": backend}, dtype=dtype).forward_trace(x, record=True)
    assume(not near_tie(td, ts, tol=NEAR_TIE[dtype]))
    for a, b in zip(td.layers, ts.layers):
        if a.kept is not None:
            assert torch.equal(a.kept, b.kept) and torch.equal(a.prop, b.prop), cfg
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert torch.allclose(td.logits, ts.logits, **tol), cfg


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vector", official_vectors(), ids=lambda v: v["id"])
def test_model_reproduces_the_authors_vectors(vector, backend):
    model, images = model_for(vector, backend=backend)
    with torch.no_grad():
        logits = model(images)
    assert torch.allclose(logits, torch.tensor(vector["logits"], dtype=torch.float64), rtol=1e-6, atol=1e-8)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_sparse_never_materialises_n_by_n():
    grid, B, C = (64, 64), 1, 16
    n = grid[0] * grid[1]
    x = torch.randn(B, 1 + n, C)
    with LargestTensor() as probe:
        G = sparse.token_graph(x[:, 1:], grid, "mixed", 8)
        for _ in range(12):
            kept, prop = sparse.select_tokens(torch.rand(B, x.shape[1] - 1), x.shape[1] // 64)
            x, G, _ = sparse.propagate(x, G, kept, prop, 0.1)
    assert probe.largest <= sparse.BLOCK_ELEMENTS < n * n // 8, probe.largest
    assert G.num_edges < (8 + 8) * n


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
@given(configs(propagation="graph"))
def test_cuda_backend_equals_cpu_dense(backend, cfg):
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_max"
    x = images_for(cfg, 2)
    with torch.no_grad():
        td = build(cfg).forward_trace(x, record=True)
        ts = build({**cfg, "backend": backend}).cuda().forward_trace(x.cuda(), record=True)
    assume(not near_tie(td, ts))
    assert torch.allclose(td.logits, ts.logits.cpu(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_agree_with_dense(backend):
    cfg = dict(
        img_size=32,
        patch_size=8,
        num_classes=3,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_prop=[3, 2],
        sparsity=0.6,
        token_scale=True,
        alpha=0.3,
        graph="mixed",
        num_neighbours=3,
    )
    grads = []
    for name in ("dense", backend):
        model = build({**cfg, "backend": name}).train()
        x = images_for(cfg, 2).requires_grad_()
        model(x).square().sum().backward()
        grads.append((x.grad, [p.grad for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-9, atol=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
