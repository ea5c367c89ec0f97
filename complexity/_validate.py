"""The cost model's own argument checks: counts that may be sympy symbols, and the schedule's
bound (the scalar checks are ``gtp_ref.validate``'s)."""

import numbers

from gtp_ref.validate import is_bool


def count(name, value, minimum=1):
    """Return ``value`` as a sympy Integer (or the symbol itself); raise ValueError otherwise.

    ``bool`` and non-integral numbers (``197.0``, ``Rational(1, 2)``) are rejected: a count
    that is not an integer is a bug in the caller, not something to round.
    """
    import sympy as sp

    if isinstance(value, sp.Basic) and not value.is_number:
        return value  # a symbol or expression: checked by its assumptions, not here
    if is_bool(value) or not (
        isinstance(value, numbers.Integral) or (isinstance(value, sp.Basic) and value.is_Integer)
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return sp.Integer(int(value))


def schedule_leaves_tokens(N, L, M):
    """Raise ValueError when ``N - L*M < 1``: the schedule would leave no token after layer L."""
    if all(getattr(v, "is_number", True) for v in (N, L, M)):
        left = N - L * M
        if left < 1:
            raise ValueError(
                f"M={M} tokens removed per layer over L={L} layers leaves N - L*M = {left} "
                f"of N={N} tokens; need N - L*M >= 1 (M <= {(int(N) - 1) // int(L)})"
            )
