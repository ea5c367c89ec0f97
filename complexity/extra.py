"""Extra cost of ToMe and GTP beyond the backbone, supplement C.4 (Eqs. 2-3), in MACs.

One named term per step of each method; the totals are sums of those terms over the
layers.  ``g_tome``/``g_gtp`` evaluate the sums as written (first line of Eqs. 2-3);
``g_tome_closed``/``g_gtp_closed`` are the closed forms *derived by sympy* from the same
terms; ``eq2_printed``/``eq3_printed`` are the closed forms exactly as printed in the
supplement.  ``eq2_correction()`` = printed - derived: non-zero, the erratum.

Notation (C.4): ``N`` tokens, ``L`` layers, ``M`` tokens removed per layer (the method's
``P``, not the semantic neighbours), ``C`` channels, ``H`` heads.
"""

from functools import cache

import sympy as sp

from complexity import symbols as s
from complexity._validate import count, schedule_leaves_tokens

Count = int | sp.Expr  # a Python int (exact result) or a sympy symbol / expression


def tokens_at_layer(N: Count, M: Count, l: Count) -> Count:
    """N_l = N - (l - 1) M: tokens entering layer l (1-based) when M are removed per layer."""
    return N - (l - 1) * M


# ---- ToMe, per layer l ------------------------------------------------------------------
def tome_matching(N_l: Count, C: Count) -> sp.Expr:
    """Bipartite cosine similarity of the two halves: (N_l/2)^2 C = 1/4 N_l^2 C."""
    return sp.Rational(1, 4) * N_l**2 * C


def tome_merging(M: Count, C: Count) -> Count:
    """Averaging M merged tokens into their destinations: M C."""
    return M * C


# ---- GTP -----------------------------------------------------------------------------------
def gtp_graph(N: Count, C: Count) -> Count:
    """Semantic graph, once per image: cosine similarity of all tokens, N^2 C."""
    return N**2 * C


def gtp_selection(N_l: Count, H: Count) -> Count:
    """Token scores aggregated over heads, as counted by the paper: H N_l (at most)."""
    return H * N_l


def gtp_propagation(N_l: Count, M: Count, C: Count) -> Count:
    """x_K += alpha A[K, P] x_P with |K| = N_l - M, |P| = M: (N_l - M) M C (at most)."""
    return (N_l - M) * M * C


def _tome_layer(N, M, C, l):
    N_l = tokens_at_layer(N, M, l)
    return tome_matching(N_l, C) + tome_merging(M, C)


def _gtp_layer(N, M, C, H, l):
    N_l = tokens_at_layer(N, M, l)
    return gtp_selection(N_l, H) + gtp_propagation(N_l, M, C)


def _layer_sum(layer, L):
    """Sum layer(l) for l = 1..L: an explicit finite sum for an integer L, else sympy's Sum."""
    if L.is_number:
        return sp.Add(*[layer(sp.Integer(i)) for i in range(1, int(L) + 1)])
    return sp.expand(sp.Sum(layer(s.l), (s.l, 1, L)).doit())


def _checked(N, L, M, C, H=None):
    N, L, M, C = count("N", N), count("L", L), count("M", M, minimum=0), count("C", C)
    schedule_leaves_tokens(N, L, M)
    if H is None:
        return N, L, M, C
    return N, L, M, C, count("H", H)


def g_tome(N: Count, L: Count, M: Count, C: Count) -> sp.Expr:
    """G_ToMe = sum_{l=1..L} (1/4 N_l^2 C + M C), N_l = N - (l-1) M   (Eq. 2, first line)."""
    N, L, M, C = _checked(N, L, M, C)
    return _layer_sum(lambda l: _tome_layer(N, M, C, l), L)


def g_gtp(N: Count, L: Count, M: Count, C: Count, H: Count) -> sp.Expr:
    """G_GTP = N^2 C + sum_{l=1..L} (H N_l + (N_l - M) M C)   (Eq. 3, first line)."""
    N, L, M, C, H = _checked(N, L, M, C, H)
    return gtp_graph(N, C) + _layer_sum(lambda l: _gtp_layer(N, M, C, H, l), L)


def eq2_printed(N: Count, L: Count, M: Count, C: Count) -> sp.Expr:
    """Eq. 2's closed form exactly as printed in the supplement (it is wrong in M^2 C)."""
    N, L, M, C = _checked(N, L, M, C)
    q = sp.Rational
    return (
        q(1, 4) * L * N**2 * C
        + q(1, 4) * (L - L**2) * N * M * C
        + (q(1, 12) * L**3 + q(1, 12) * L**2 + q(1, 8) * L) * M**2 * C
        + L * M * C
    )


def eq3_printed(N: Count, L: Count, M: Count, C: Count, H: Count) -> sp.Expr:
    """Eq. 3's closed form exactly as printed in the supplement (it equals the sum)."""
    N, L, M, C, H = _checked(N, L, M, C, H)
    q = sp.Rational
    return (
        N**2 * C + L * H * N + L * M * N * C - q(1, 2) * (L**2 - L) * H * M - q(1, 2) * (L + L**2) * M**2 * C
    )


@cache
def g_tome_closed() -> sp.Expr:
    """Closed form of Eq. 2's sum, derived by sympy's summation over l (not typed in)."""
    return sp.expand(sp.summation(_tome_layer(s.N, s.M, s.C, s.l), (s.l, 1, s.L)))


@cache
def g_gtp_closed() -> sp.Expr:
    """Closed form of Eq. 3's sum, derived by sympy's summation over l (not typed in)."""
    return sp.expand(gtp_graph(s.N, s.C) + sp.summation(_gtp_layer(s.N, s.M, s.C, s.H, s.l), (s.l, 1, s.L)))


@cache
def eq2_correction() -> sp.Expr:
    """printed Eq. 2 - derived closed form, simplified: L (5 L + 2) M^2 C / 24 (non-zero)."""
    return sp.factor(sp.simplify(eq2_printed(s.N, s.L, s.M, s.C) - g_tome_closed()))


@cache
def eq3_difference() -> sp.Expr:
    """printed Eq. 3 - derived closed form, simplified: 0 (the printed form is right)."""
    return sp.simplify(eq3_printed(s.N, s.L, s.M, s.C, s.H) - g_gtp_closed())


def m2c_coefficient(expr: sp.Expr) -> sp.Expr:
    """Coefficient of M^2 C in a closed form (a polynomial in L)."""
    return sp.expand(expr).coeff(s.M, 2).coeff(s.C, 1)
