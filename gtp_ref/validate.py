"""Argument checks for scalars: the one home of their rules and messages, for the models, the ops,
the commands and the cost model alike (no torch, no sympy import).

Each raises before any work is done: ``TypeError`` for a value of the wrong kind (a string,
``None``, a ``bool`` where a count is meant, a float where an integer is meant), ``ValueError``
for a value out of range; the message names the argument, the value and what is valid.  numpy
integer and floating-point scalars are accepted wherever a Python ``int`` / ``float`` is, and
are returned as the Python value.
"""

import math
import numbers
import operator
import sys
from typing import Any


def _is_sympy(value: Any) -> bool:
    sp = sys.modules.get("sympy")  # a sympy object exists only if sympy was imported
    return sp is not None and isinstance(value, sp.Basic)


def is_bool(value: Any) -> bool:
    np = sys.modules.get("numpy")  # a numpy bool exists only if numpy was imported
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


def _range(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return "" if maximum is None else f" <= {maximum}"


def choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices`` (strings), else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int in [minimum, maximum]."""
    if is_bool(value) or isinstance(value, float) or _is_sympy(value):
        raise TypeError(
            f"{name}={value!r} must be an integer{_range(minimum, maximum)}, got {type(value).__name__}"
        )
    try:
        value = operator.index(value)  # int, numpy / torch integer scalars
    except TypeError:
        raise TypeError(
            f"{name}={value!r} must be an integer{_range(minimum, maximum)}, got {type(value).__name__}"
        ) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value!r} must be an integer{_range(minimum, maximum)}")
    return value


def real(
    name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False
) -> float:
    """``value`` as a finite Python float in [low, high] (``low_open``: (low, high])."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (value <= low if low_open else value < low) or value > high:
        where = (
            ""
            if (low, high) == (-math.inf, math.inf)
            else f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        )
        raise ValueError(f"{name}={value!r} must be a finite number{where}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a Python bool: only True / False (and numpy's bools) are accepted."""
    if is_bool(value):
        return bool(value)
    raise TypeError(f"{name}={value!r} must be True or False, got {type(value).__name__}")


def pair(name: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1, as a tuple (h, w)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        value = (value, value)
    if len(value) != 2:
        raise ValueError(f"{name}={value!r} must be a positive int or a pair of positive ints")
    return tuple(integer(name, v, minimum=1) for v in value)
