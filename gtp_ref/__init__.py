"""gtp-ref: the reference implementation of GTP (Graph-based Token Propagation, GTP-ViT).

``from_timm(timm_model, **gtp_settings)`` puts GTP into your timm ViT, ``from_hf(hf_model, ...)``
into your Hugging Face one; ``GTPViT`` is the model
(its whole GTP step is ``gtp_ref.model.GTPBlock.forward``), built from a ``ViTConfig`` (the
backbone as one value, ``gtp_ref.config``) and ``GTPSettings`` (``paper_settings``: the paper's);
the presets build the paper's backbones.  The method's stages are ``graph``, ``select`` and
``propagate``; ``gtp_ref.backends`` holds the op-level API's implementations (``dense``: the
reference, ``sparse``, ``fast``); ``gtp_ref.tome`` runs ToMe on the same backbone;
``gtp_ref.conformance`` checks other implementations.  The commands (bench, eval, vis, digits,
support) live in ``gtp_ref.apps``; the library never imports them.

The torch-free base -- ``gtp_ref.validate`` (the scalar checks), ``gtp_ref.schedule`` (the token
schedules), ``gtp_ref.config`` (``ViTConfig``, the presets' configs), ``gtp_ref.cli`` (the commands'
plumbing) and ``gtp_ref.style`` (the figures' colours) -- imports neither torch nor sympy: the cost
model (``complexity``) stands on it.  So the names below are loaded from their modules, with torch,
when first used (``__getattr__``, PEP 562), not when ``gtp_ref`` is imported.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Each public name, and the module that defines it.
_PUBLIC = {
    "from_timm": "gtp_ref.timm_models",
    "tome_from_timm": "gtp_ref.timm_models",
    "from_hf": "gtp_ref.hf_models",
    "tome_from_hf": "gtp_ref.hf_models",
    "GTPViT": "gtp_ref.model",
    "GTPTrace": "gtp_ref.model",
    "LayerTrace": "gtp_ref.model",
    "Provenance": "gtp_ref.model",
    "GTPSettings": "gtp_ref.settings",
    "ViTConfig": "gtp_ref.config",
    "paper_settings": "gtp_ref.presets",
    "deit_tiny": "gtp_ref.presets",
    "deit_small": "gtp_ref.presets",
    "deit_base": "gtp_ref.presets",
    "vit_large": "gtp_ref.presets",
    "eva_large": "gtp_ref.presets",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gtp_ref' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs see (the names of __all__, which is built from _PUBLIC)
    from gtp_ref.config import ViTConfig  # noqa: F401
    from gtp_ref.hf_models import from_hf, tome_from_hf  # noqa: F401
    from gtp_ref.model import GTPTrace, GTPViT, LayerTrace, Provenance  # noqa: F401
    from gtp_ref.presets import deit_base, deit_small, deit_tiny, eva_large, paper_settings, vit_large  # noqa: F401
    from gtp_ref.settings import GTPSettings  # noqa: F401
    from gtp_ref.timm_models import from_timm, tome_from_timm  # noqa: F401
