"""Argument checks for scalars, shared by the cost model and ``gtp_ref`` (no torch, no sympy import).

Each raises before any work is done: ``TypeError`` for a value of the wrong kind (a string,
``None``, a ``bool`` where a count is meant, a float where an integer is meant), ``ValueError``
for a value out of range; the message names the argument, the value and what is valid.  numpy
integer and floating-point scalars are accepted wherever a Python ``int`` / ``float`` is, and
are returned as the Python value.  ``count`` also takes sympy integers and symbols.
"""
import math
import numbers
import operator
import sys


def _is_sympy(value):
    sp = sys.modules.get("sympy")  # a sympy object exists only if sympy was imported
    return sp is not None and isinstance(value, sp.Basic)


def _is_bool(value):
    np = sys.modules.get("numpy")  # a numpy bool exists only if numpy was imported
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


def _range(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return "" if maximum is None else f" <= {maximum}"


def choice(name, value, choices):
    """``value`` if it is one of ``choices`` (strings), else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def integer(name, value, minimum=None, maximum=None):
    """``value`` as a Python int in [minimum, maximum]."""
    if _is_bool(value) or isinstance(value, float) or _is_sympy(value):
        raise TypeError(f"{name}={value!r} must be an integer{_range(minimum, maximum)}, "
                        f"got {type(value).__name__}")
    try:
        value = operator.index(value)  # int, numpy / torch integer scalars
    except TypeError:
        raise TypeError(f"{name}={value!r} must be an integer{_range(minimum, maximum)}, "
                        f"got {type(value).__name__}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value!r} must be an integer{_range(minimum, maximum)}")
    return value


def real(name, value, low=-math.inf, high=math.inf, *, low_open=False):
    """``value`` as a finite Python float in [low, high] (``low_open``: (low, high])."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (value <= low if low_open else value < low) or value > high:
        where = "" if (low, high) == (-math.inf, math.inf) else \
            f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}={value!r} must be a finite number{where}")
    return value


def flag(name, value):
    """``value`` as a Python bool: only True / False (and numpy's bools) are accepted."""
    if _is_bool(value):
        return bool(value)
    raise TypeError(f"{name}={value!r} must be True or False, got {type(value).__name__}")


def pair(name, value):
    """An int or a pair of ints, each >= 1, as a tuple (h, w)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        value = (value, value)
    if len(value) != 2:
        raise ValueError(f"{name}={value!r} must be a positive int or a pair of positive ints")
    return tuple(integer(name, v, minimum=1) for v in value)


def count(name, value, minimum=1):
    """Return ``value`` as a sympy Integer (or the symbol itself); raise ValueError otherwise.

    ``bool`` and non-integral numbers (``197.0``, ``Rational(1, 2)``) are rejected: a count
    that is not an integer is a bug in the caller, not something to round.
    """
    import sympy as sp

    if isinstance(value, sp.Basic) and not value.is_number:
        return value  # a symbol or expression: checked by its assumptions, not here
    if _is_bool(value) or not (isinstance(value, numbers.Integral)
                               or (isinstance(value, sp.Basic) and value.is_Integer)):
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
