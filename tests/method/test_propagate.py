"""Propagation (spec 3.5): graph / mean / none against the equations, with token sizes."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from gtp_ref.backends import dense
from tests.helpers import tensors


@st.composite
def layers(draw, ties=None):
    """(x [B, N, C], G [B, n, n], kept, prop, sizes [B, N] or None, class_token)."""
    class_token = draw(st.booleans())
    B, n, C = draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.integers(1, 4))
    N = n + int(class_token)
    x = draw(tensors((B, N, C), ties=ties))
    x_img = x[:, int(class_token) :]
    M = draw(st.integers(0, n - 1))
    graph = draw(st.sampled_from(["spatial", "semantic", "mixed"]))
    G = dense.token_graph(x_img, (1, n), graph, M)
    P = draw(st.integers(0, n - 1))
    kept, prop = dense.select_tokens(draw(tensors((B, n), ties=ties)), P)
    sizes = None
    if draw(st.booleans()):
        sizes = draw(tensors((B, N), ties=True, low=1, high=4))
        if class_token:
            sizes[:, 0] = 1.0
    return x, G, kept, prop, sizes, class_token


@given(layers(), st.floats(-1, 1))
def test_graph_propagation_is_the_equation(layer, alpha):
    x, G, kept, prop, s, cls = layer
    c = int(cls)
    out, G2, s2 = dense.propagate(x, G, kept, prop, alpha, s, cls, "graph")
    B, C = x.shape[0], x.shape[2]
    for b in range(B):
        K, P = kept[b].tolist(), prop[b].tolist()
        assert torch.equal(out[b, :c], x[b, :c]), "[CLS] is never changed"
        for a, i in enumerate(K):
            want = x[b, c + i] + alpha * sum(
                (G[b, i, j] * x[b, c + j] for j in P), torch.zeros(C, dtype=x.dtype)
            )
            assert torch.allclose(out[b, c + a], want, rtol=1e-12, atol=1e-12), (b, i)
            if s is not None:
                want_s = s[b, c + i] + alpha * sum(
                    (G[b, i, j] * s[b, c + j] for j in P), torch.tensor(0.0, dtype=x.dtype)
                )
                assert torch.allclose(s2[b, c + a], want_s, rtol=1e-12, atol=1e-12)
            for a2, i2 in enumerate(K):
                assert G2[b, a, a2] == G[b, i, i2], "next graph is Â[K, K], not renormalised"
        if s is not None and c:
            assert s2[b, 0] == 1.0


@given(layers())
def test_alpha_zero_is_pruning(layer):
    x, G, kept, prop, s, cls = layer
    c = int(cls)
    a = dense.propagate(x, G, kept, prop, 0.0, s, cls, "graph")
    none = dense.propagate(x, G, kept, prop, 0.3, s, cls, "none")  # alpha is unused by none
    assert torch.equal(a[0], none[0]) and torch.equal(a[1], none[1])
    assert (a[2] is None and none[2] is None) or torch.equal(a[2], none[2])
    assert torch.equal(none[0][:, c:], x[:, c:][torch.arange(x.shape[0])[:, None], kept])


@given(layers())
def test_mean_appends_the_mean_of_the_propagated(layer):
    x, G, kept, prop, s, cls = layer
    c, P = int(cls), prop.shape[1]
    out, G2, s2 = dense.propagate(x, G, kept, prop, 0.5, s, cls, "mean")
    n_next = kept.shape[1] + (1 if P > 0 else 0)
    assert out.shape[1] == c + n_next and G2.shape[1:] == (n_next, n_next)
    if P > 0:
        x_P = x[:, c:][torch.arange(x.shape[0])[:, None], prop]
        assert torch.allclose(out[:, -1], x_P.mean(1), rtol=1e-12, atol=1e-12)
        assert (G2[:, -1] == 0).all() and (G2[:, :, -1] == 0).all(), "the mean token has no edges"
        if s is not None:
            s_P = s[:, c:][torch.arange(x.shape[0])[:, None], prop]
            assert torch.equal(s2[:, -1], s_P.sum(1))


@given(layers(ties=False), st.data())
def test_propagation_is_permutation_equivariant(layer, data):
    """Relabel the image tokens (x, G and the indices consistently): the result is relabelled."""
    x, G, kept, prop, s, cls = layer
    c, n = int(cls), x.shape[1] - int(cls)
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)  # new j <- old perm[j]
    inv = torch.argsort(perm)
    full = torch.cat([torch.arange(c), c + perm])
    xp, Gp = x[:, full], G[:, perm][:, :, perm]
    sp = None if s is None else s[:, full]
    kept_p, prop_p = inv[kept].sort(-1).values, inv[prop]
    out, G2, s2 = dense.propagate(xp, Gp, kept_p, prop_p, 0.7, sp, cls, "graph")
    ref, Gr, sr = dense.propagate(x, G, kept, prop, 0.7, s, cls, "graph")
    # kept_p in ascending new labels corresponds to old tokens perm[kept_p].
    order = torch.argsort(perm[kept_p], dim=-1)
    assert torch.allclose(
        out[:, c:][torch.arange(x.shape[0])[:, None], order], ref[:, c:], rtol=1e-12, atol=1e-12
    )


def test_no_graph_for_mean_and_none():
    x = torch.randn(1, 5, 2)
    kept, prop = torch.tensor([[0, 1, 3]]), torch.tensor([[2]])
    out, G, s = dense.propagate(x, None, kept, prop, 0.1, None, True, "none")
    assert out.shape == (1, 4, 2) and G is None and s is None
