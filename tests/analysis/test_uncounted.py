"""The uncounted-work model and the exact variants of Eqs. 2-3."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from complexity import g_gtp, g_tome
from complexity.exact import g_gtp_exact, g_tome_exact
from complexity.uncounted import Ops, gtp_uncounted, tome_uncounted, total


def test_gtp_uncounted_by_hand():
    # N = 5 ([CLS] + 2x2), L = 1, P = 1, C = 2, H = 1, theta = 0.6, fp16.
    steps = gtp_uncounted(5, 1, 1, 2, 1, sparsity=0.6)
    assert steps["semantic top-M (once)"] == Ops(comparisons=32, additions=8, bytes=64)
    assert steps["sparsity threshold"] == Ops(comparisons=50, bytes=150)
    assert steps["column sums"] == Ops(additions=20, bytes=40)  # H N_l n_l, not H N_l
    assert steps["score"] == Ops(comparisons=8, additions=4, bytes=16)
    assert steps["ranking"] == Ops(comparisons=4, bytes=8)
    assert steps["gathers"] == Ops(bytes=64)
    assert total(steps) == Ops(comparisons=94, additions=32, bytes=342)
    assert gtp_uncounted(5, 1, 1, 2, 1, sparsity=1.0)["sparsity threshold"] == Ops()


def test_tome_uncounted_by_hand():
    # N = 5, L = 1, r = 1, C = 4, H = 2 (d = 2): A = 3, B = 2.
    steps = tome_uncounted(5, 1, 1, 4, 2)
    assert steps["best match"] == Ops(comparisons=6, bytes=12)
    assert steps["key average"] == Ops(additions=20, bytes=(20 + 10) * 2)
    assert steps["merge"] == Ops(additions=60, bytes=120)


@given(st.integers(2, 40), st.integers(1, 12), st.integers(0, 4), st.integers(1, 8))
def test_exact_variants_relate_to_eqs_2_3(side, L, P, H):
    """The exact counts never exceed the paper's: GTP by at most the [CLS] terms, ToMe by a factor H."""
    N, C = side * side + 1, 64 * H
    if N - 1 - L * P < 1:
        return
    exact = g_gtp_exact(N - 1, [P] * L, C)
    paper = g_gtp(N, L, P, C, H)
    # paper - exact = (N^2 - n^2) C (graph over N, not n) + L P C ([CLS] counted in N_l)
    #                 + H sum_l N_l (the score, no matrix product); with P = 0 nothing is built.
    n = N - 1
    score = sum(H * (N - l * P) for l in range(L))
    if P:
        assert paper - exact == (2 * n + 1) * C + L * P * C + score
    else:
        assert exact == 0 and paper == N * N * C + score
    r_exact = g_tome_exact(N, [P] * L, C, H)
    assert r_exact * H <= g_tome(N, L, P, C)


def test_bad_arguments():
    with pytest.raises(ValueError, match="17 of the 9 image tokens left at block 11"):
        gtp_uncounted(197, 12, 17, 384, 6)
    with pytest.raises(ValueError, match="C=10 is not divisible by H=4"):
        g_tome_exact(197, [1], 10, 4)
