"""The symbols of supplement C.4, declared once with their assumptions.

N  total number of tokens entering layer 1 ([CLS] included when the model has one)
L  number of layers
M  tokens removed per layer -- the method's ``P``; *not* the semantic neighbours
C  feature dimension
H  number of attention heads
l  layer index, 1..L
"""

import sympy as sp

N, L, C, H, l = sp.symbols("N L C H l", integer=True, positive=True)
M = sp.Symbol("M", integer=True, nonnegative=True)

__all__ = ["N", "L", "M", "C", "H", "l"]
