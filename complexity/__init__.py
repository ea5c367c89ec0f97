"""Analytical cost model of GTP vs ToMe (supplement C.4, Eqs. 2-3) and of the ViT backbone.

Every public function accepts Python ints (exact integer / rational results) or sympy
symbols (symbolic expressions).  Notation follows supplement C.4, where ``M`` is the number
of tokens *removed per layer* -- the model's ``num_prop`` (P), ``--num-prop`` on the command
line -- **not** the number of semantic neighbours of the token graph.

The cost model is a client of the library's torch-free base: the backbones it counts are
``gtp_ref.config.ViTConfig`` values (``gtp_ref.config.PRESETS``), the token schedules
``gtp_ref.schedule``'s.  ``complexity.backbone`` is plain Python; the sympy expressions of
``complexity.extra`` load on first use.
"""

from complexity.backbone import backbone_macs

_SYMPY = ("g_tome", "g_gtp", "eq2_printed", "eq3_printed", "g_tome_closed", "g_gtp_closed", "eq2_correction")

__all__ = [*_SYMPY, "backbone_macs"]


def __getattr__(name):
    if name in _SYMPY:
        from complexity import extra

        return getattr(extra, name)
    raise AttributeError(f"module 'complexity' has no attribute {name!r}")
