"""Analytical cost model of GTP vs ToMe (supplement C.4, Eqs. 2-3) and of the ViT backbone.

Every public function accepts Python ints (exact integer / rational results) or sympy
symbols (symbolic expressions).  Notation follows supplement C.4, where ``M`` is the number
of tokens *removed per layer* (the ``P`` of the method), **not** the number of semantic
neighbours of the token graph.
"""
from complexity.extra import (
    eq2_correction,
    eq2_printed,
    eq3_printed,
    g_gtp,
    g_gtp_closed,
    g_tome,
    g_tome_closed,
)
from complexity.backbone import ViTGeometry, PRESETS, backbone_macs, gtp_schedule, tome_schedule

__all__ = [
    "g_tome",
    "g_gtp",
    "eq2_printed",
    "eq3_printed",
    "g_tome_closed",
    "g_gtp_closed",
    "eq2_correction",
    "ViTGeometry",
    "PRESETS",
    "backbone_macs",
    "gtp_schedule",
    "tome_schedule",
]
