"""Attention sparsity, token scores and selection (spec 3.2 and 3.4) against brute force."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from gtp_ref.backends import dense
from gtp_ref.select import sparsity_k
from tests.helpers import attention_maps, selections, tensors


def test_k_is_computed_like_the_authors():
    assert sparsity_k(10, 0.9) == 9  # 100 * 0.09999999999999998, truncated
    assert sparsity_k(197, 0.6) == int(197 * 197 * (1 - 0.6))
    assert sparsity_k(3, 0.95) == 0


@given(attention_maps(), st.floats(0.01, 1.0))
def test_sparsify_zeroes_exactly_the_entries_below_the_kth_smallest(am, theta):
    attn, _ = am
    B, H, N, _ = attn.shape
    out = dense.sparsify_attention(attn, theta)
    k = int(N * N * (1.0 - theta))
    for b in range(B):
        for h in range(H):
            flat = sorted(attn[b, h].flatten().tolist())
            tau = flat[k - 1] if k >= 1 else None
            for i in range(N):
                for j in range(N):
                    a = attn[b, h, i, j].item()
                    want = 0.0 if tau is not None and theta < 1 and a < tau else a
                    assert out[b, h, i, j].item() == want, f"{theta=} {k=} b={b} h={h} ({i},{j})"


def test_sparsify_k0_and_theta1_are_identity():
    attn = torch.rand(2, 2, 3, 3).softmax(-1)
    assert torch.equal(dense.sparsify_attention(attn, 0.95), attn)  # k = int(9 * 0.05) = 0
    assert torch.equal(dense.sparsify_attention(attn, 1.0), attn)


def brute_scores(attn, selection, class_token):
    """The table of spec 3.4 with explicit loops over heads, rows and columns."""
    c = int(class_token)
    B, H, N, _ = attn.shape
    n = N - c
    agg = (lambda v: sum(v) / len(v)) if selection.endswith("mean") else max
    out = torch.zeros(B, n, dtype=attn.dtype)
    for b in range(B):
        A = attn[b]

        def img(j, agg=agg):
            return agg([sum(A[h, i, c + j].item() for i in range(N)) for h in range(H)])

        def diag(j, agg=agg):
            return agg([A[h, c + j, c + j].item() for h in range(H)])

        R = [[agg([A[h, c + j, m].item() for h in range(H)]) for m in range(N)] for j in range(n)]

        def cos(u, v):
            nu, nv = sum(a * a for a in u) ** 0.5, sum(a * a for a in v) ** 0.5
            return 0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv)

        for j in range(n):
            out[b, j] = {
                "cls": lambda: agg([A[h, 0, c + j].item() for h in range(H)]),
                "img": lambda: img(j),
                "diag": lambda: diag(j),
                "mixed": lambda: diag(j) * img(j),
                "sum": lambda: diag(j, max) + img(j, max),
                "cos": lambda: -sum(cos(R[j], R[k]) for k in range(n)),
            }[selection.split("_")[0]]()
    return out


@given(attention_maps(), selections)
def test_scores_match_the_table(am, selection):
    attn, class_token = am
    if selection == "random" or (selection.startswith("cls") and not class_token):
        return
    got = dense.token_scores(attn, selection, class_token)
    want = brute_scores(attn, selection, class_token)
    assert got.shape == (attn.shape[0], attn.shape[2] - int(class_token))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), f"{selection=} {class_token=}"


@given(attention_maps(ties=False), selections, st.data())
def test_scores_are_permutation_equivariant(am, selection, data):
    attn, class_token = am
    if selection == "random" or (selection.startswith("cls") and not class_token):
        return
    c = int(class_token)
    n = attn.shape[-1] - c
    perm = data.draw(st.permutations(range(n)))
    full = torch.tensor(list(range(c)) + [c + p for p in perm])  # [CLS] stays first
    permuted = attn[:, :, full][:, :, :, full]
    got = dense.token_scores(permuted, selection, class_token)
    want = dense.token_scores(attn, selection, class_token)[:, perm]
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), selection


def test_random_scores_follow_the_generator():
    attn = torch.rand(2, 3, 5, 5).softmax(-1)
    a = dense.token_scores(attn, "random", True, torch.Generator().manual_seed(0))
    b = dense.token_scores(attn, "random", True, torch.Generator().manual_seed(0))
    assert a.shape == (2, 4) and torch.equal(a, b)


@st.composite
def scores_and_P(draw, ties=None):
    B, n = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    return draw(tensors((B, n), ties=ties, low=0, high=3)), draw(st.integers(0, n))


@given(scores_and_P())
def test_selection_partitions_the_image_tokens(sp):
    scores, P = sp
    B, n = scores.shape
    kept, prop = dense.select_tokens(scores, P)
    assert kept.shape == (B, n - P) and prop.shape == (B, P)
    assert kept.dtype == prop.dtype == torch.long
    for b in range(B):
        k, p = kept[b].tolist(), prop[b].tolist()
        assert sorted(k + p) == list(range(n)), "kept and prop are a partition"
        assert k == sorted(k), "kept stays in original order"


@given(scores_and_P(ties=True))
def test_ties_propagate_the_larger_index_first(sp):
    scores, P = sp
    kept, prop = dense.select_tokens(scores, P)
    for b in range(scores.shape[0]):
        s = scores[b].tolist()
        ranked = sorted(range(len(s)), key=lambda j: (s[j], -j))
        assert prop[b].tolist() == ranked[:P], f"scores {s}, P={P}"
        assert kept[b].tolist() == sorted(ranked[P:])


@given(scores_and_P(ties=False), st.data())
def test_selection_is_permutation_equivariant_without_ties(sp, data):
    scores, P = sp
    n = scores.shape[1]
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    kept, prop = dense.select_tokens(scores, P)
    kept_p, prop_p = dense.select_tokens(scores[:, perm], P)
    assert torch.equal(perm[prop_p], prop)
    assert torch.equal(perm[kept_p].sort(-1).values, kept)
