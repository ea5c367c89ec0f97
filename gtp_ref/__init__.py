"""gtp-ref: the reference implementation of GTP (Graph-based Token Propagation, GTP-ViT).

``from_timm(timm_model, **gtp_settings)`` puts GTP into your timm ViT; ``GTPViT`` is the model
(its whole GTP step is ``gtp_ref.model.GTPBlock.forward``), ``GTPSettings`` its settings and
``paper_settings`` the paper's, the presets build the paper's backbones.  The method's stages
are ``graph``, ``select`` and ``propagate``; ``gtp_ref.backends`` holds the op-level API's
implementations (``dense``: the reference, ``sparse``, ``fast``); ``gtp_ref.tome`` runs ToMe on
the same backbone; ``gtp_ref.conformance`` checks other implementations.  The commands (bench,
eval, vis, digits) live in ``gtp_ref.apps``; the library never imports them.
"""
import importlib.abc
import importlib.util
import sys

from gtp_ref.model import GTPTrace, GTPViT, LayerTrace, Provenance
from gtp_ref.presets import deit_base, deit_small, deit_tiny, eva_large, paper_settings, vit_large
from gtp_ref.settings import GTPSettings
from gtp_ref.timm_models import from_timm, tome_from_timm

__all__ = ["from_timm", "tome_from_timm", "GTPViT", "GTPSettings", "paper_settings", "GTPTrace", "LayerTrace",
           "Provenance", "deit_tiny", "deit_small", "deit_base", "vit_large", "eva_large"]

COMMANDS = ("bench", "eval", "vis", "digits", "support")  # python -m gtp_ref.<command>: gtp_ref.apps.<command>


class _CommandFinder(importlib.abc.MetaPathFinder):
    """``python -m gtp_ref.bench`` (eval, vis, digits, support) runs ``gtp_ref.apps.bench``: the same files,
    under the short name (a name only; nothing of the commands is imported until one is run)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        prefix, _, command = fullname.partition(".")
        if prefix != "gtp_ref" or command not in COMMANDS:
            return None
        real = importlib.util.find_spec(f"gtp_ref.apps.{command}")
        return importlib.util.spec_from_file_location(fullname, real.origin,
                                                      submodule_search_locations=real.submodule_search_locations)


if not any(isinstance(f, _CommandFinder) for f in sys.meta_path):
    sys.meta_path.append(_CommandFinder())
