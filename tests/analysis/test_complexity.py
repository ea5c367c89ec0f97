"""The C.4 cost model: exact algebra of Eqs. 2-3, the erratum, the quoted values, bad input."""

import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from complexity import eq2_correction, eq2_printed, eq3_printed, g_gtp, g_gtp_closed, g_tome, g_tome_closed
from complexity import symbols as s
from complexity.extra import eq3_difference, m2c_coefficient


@st.composite
def c4_params(draw):
    """(N, L, M, C, H) with N - L*M >= 1, reaching M = 0, L = 1 and N - L*M = 1."""
    L = draw(st.integers(1, 40))
    M = draw(st.integers(0, 24))
    N = L * M + draw(st.integers(1, 600))
    return N, L, M, draw(st.integers(1, 4096)), draw(st.integers(1, 64))


def subs(expr, N, L, M, C, H=1):
    return expr.subs({s.N: N, s.L: L, s.M: M, s.C: C, s.H: H})


@given(c4_params())
def test_derived_closed_forms_equal_the_sums(p):
    N, L, M, C, H = p
    assert g_tome(N, L, M, C) == subs(g_tome_closed(), *p), f"Eq. 2 sum vs derived, {p=}"
    assert g_gtp(N, L, M, C, H) == subs(g_gtp_closed(), *p), f"Eq. 3 sum vs derived, {p=}"


@given(c4_params())
def test_printed_eq3_equals_its_sum(p):
    N, L, M, C, H = p
    assert eq3_printed(N, L, M, C, H) == g_gtp(N, L, M, C, H), f"{p=}"


@given(c4_params())
def test_printed_eq2_differs_by_exactly_the_derived_correction(p):
    N, L, M, C, H = p
    diff = eq2_printed(N, L, M, C) - g_tome(N, L, M, C)
    assert diff == subs(eq2_correction(), *p), f"{p=}"
    assert (diff > 0) == (M > 0), f"the printed Eq. 2 overstates ToMe whenever M > 0, {p=}"


@given(c4_params())
def test_integer_inputs_give_exact_sympy_numbers(p):
    N, L, M, C, H = p
    for value in (g_tome(N, L, M, C), g_gtp(N, L, M, C, H), eq2_printed(N, L, M, C)):
        assert isinstance(value, sp.Rational), type(value)


def test_symbolic_sums_and_printed_forms():
    assert sp.simplify(g_tome(s.N, s.L, s.M, s.C) - g_tome_closed()) == 0
    assert sp.simplify(g_gtp(s.N, s.L, s.M, s.C, s.H) - g_gtp_closed()) == 0
    assert eq3_difference() == 0
    assert sp.simplify(eq2_printed(s.N, s.L, s.M, s.C) - g_tome_closed()) != 0
    # The spec's statement of the erratum (GTP_METHOD.md section 5).
    L = s.L
    assert sp.expand(m2c_coefficient(g_tome_closed()) - (L**3 / 12 - L**2 / 8 + L / 24)) == 0
    assert sp.expand(m2c_coefficient(eq2_printed(s.N, L, s.M, s.C)) - (L**3 / 12 + L**2 / 12 + L / 8)) == 0
    assert sp.expand(eq2_correction() - L * (5 * L + 2) * s.M**2 * s.C / 24) == 0


def test_sum_is_the_first_line_of_eq2_term_by_term():
    # DeiT-S by hand: N_l = 197 - 8 (l - 1).
    expected = sum(sp.Rational(1, 4) * (197 - 8 * (l - 1)) ** 2 * 384 + 8 * 384 for l in range(1, 13))
    assert g_tome(197, 12, 8, 384) == expected
    expected = 197**2 * 384 + sum(6 * (197 - 8 * (l - 1)) + (197 - 8 * l) * 8 * 384 for l in range(1, 13))
    assert g_gtp(197, 12, 8, 384, 6) == expected


@pytest.mark.parametrize(
    "N, form, method, quoted",
    [
        (196, "sum", "GTP", 20.1),
        (196, "printed", "ToMe", 28.3),
        (197, "sum", "GTP", 40.5),
        (197, "printed", "ToMe", 57.3),
    ],
)
def test_quoted_values_and_what_reproduces_them(N, form, method, quoted):
    from complexity.report import BACKBONES, reproductions

    b = BACKBONES[0] if quoted < 30 else BACKBONES[1]
    cands = reproductions(b, method, quoted)
    hits = [(c["N"], c["form"].split()[-1]) for c in cands if c["reproduces"]]
    assert (N, form) in hits, f"{b.name} {method} {quoted}: reproduced by {hits}"
    if method == "ToMe":
        assert hits == [(N, "printed")], f"only the printed Eq. 2 reproduces {quoted}: {hits}"


def test_stated_settings_give_the_spec_values():
    # GTP_METHOD.md section 5: N = 197 gives 20.26 and 27.88 (printed Eq. 2: 28.64); DeiT-B 55.77.
    assert round(float(g_gtp(197, 12, 8, 384, 6)) / 1e6, 2) == 20.26
    assert round(float(g_tome(197, 12, 8, 384)) / 1e6, 2) == 27.88
    assert round(float(eq2_printed(197, 12, 8, 384)) / 1e6, 2) == 28.64
    assert round(float(g_tome(197, 12, 8, 768)) / 1e6, 2) == 55.77


@pytest.mark.parametrize("fn", [g_tome, eq2_printed, lambda *a: g_gtp(*a, 6), lambda *a: eq3_printed(*a, 6)])
@pytest.mark.parametrize(
    "args, name",
    [
        ((-1, 12, 8, 384), "N"),
        ((197, 0, 8, 384), "L"),
        ((197, 12, -1, 384), "M"),
        ((197, 12, 8, 0), "C"),
        ((197.0, 12, 8, 384), "N"),
        ((197, 12, sp.Rational(1, 2), 384), "M"),
        ((197, True, 8, 384), "L"),
        ((96, 12, 8, 384), "M"),
    ],
)
def test_bad_counts_raise_value_error_naming_the_argument(fn, args, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fn(*args)


def test_bad_heads():
    with pytest.raises(ValueError, match=r"\bH\b"):
        g_gtp(197, 12, 8, 384, 0)


def test_schedule_may_leave_exactly_one_token():
    assert g_tome(97, 12, 8, 384) > 0  # 97 - 96 = 1 token left after layer 12
