"""GTP's settings as one frozen object, and the one function that validates them.

``GTPSettings`` holds what a ``GTPViT`` does besides its backbone: ``num_prop`` (P, tokens
propagated per block), the token graph (``graph``, ``num_neighbours`` = M), the ``selection``, the
``propagation``, the attention ``sparsity`` (theta), ``alpha``, ``token_scale`` and the ``backend``.
``checked(depth, n, prefix_tokens)`` applies every rule of docs/spec.md ("Errors"), the rules
that tie settings together included, and returns the settings normalised (Python scalars,
``num_prop`` one int per block); a ``GTPViT`` runs it in its constructor and again whenever one
of these attributes is assigned, so a built model never holds settings its constructor would refuse.
"""

from dataclasses import dataclass, fields, replace
from typing import Any

from gtp_ref._checks import GRAPHS, SELECTIONS, check_alpha, check_num_neighbours, check_sparsity
from gtp_ref.backends import NAMES as BACKENDS
from gtp_ref.schedule import PROPAGATIONS, prop_schedule
from gtp_ref.validate import choice, flag, integer


@dataclass(frozen=True)
class GTPSettings:
    """GTP's settings (docs/spec.md sections 2-3); the defaults leave the backbone unreduced
    (P = 0, theta = 1), with the paper's graph, selection and alpha."""

    num_prop: int | tuple[int, ...] = 0  # P per block: an int, or one per block
    graph: str = "mixed"  # spatial, semantic or mixed
    num_neighbours: int = 4  # M, the semantic neighbours
    selection: str = "mixed_attn_max"
    propagation: str = "graph"  # graph (GTP), mean or none (pruning)
    sparsity: float = 1.0  # theta in (0, 1]
    alpha: float = 0.1  # the propagation weight, in [-1, 1]
    token_scale: bool = False  # proportional attention with token sizes
    backend: str = "dense"  # dense (the reference), sparse or fast

    def checked(self, depth: int, n: int, prefix_tokens: int) -> "GTPSettings":
        """These settings validated for a model of ``depth`` blocks, ``n`` image tokens and
        ``prefix_tokens`` prefix tokens, normalised; TypeError / ValueError naming the first
        setting that is not valid."""
        graph, selection = (
            choice("graph", self.graph, GRAPHS),
            choice("selection", self.selection, SELECTIONS),
        )
        propagation = choice("propagation", self.propagation, PROPAGATIONS)
        backend = choice("backend", self.backend, BACKENDS)
        sparsity, alpha = check_sparsity(self.sparsity), check_alpha(self.alpha)
        token_scale = flag("token_scale", self.token_scale)
        if token_scale and propagation == "graph" and alpha < 0:
            raise ValueError(
                f"alpha={alpha!r} must be >= 0 with token_scale=True: sizes "
                "s_K + alpha Â[K, P] s_P must stay positive for log s"
            )
        if not prefix_tokens and selection.startswith("cls_attn"):
            raise ValueError(f"selection={selection!r} needs a [CLS] token (class_token=True)")
        num_neighbours = integer("num_neighbours", self.num_neighbours, minimum=0)
        if graph in ("semantic", "mixed"):
            check_num_neighbours(num_neighbours, n)
        schedule = tuple(prop_schedule(self.num_prop, depth, n, propagation))
        return GTPSettings(
            schedule, graph, num_neighbours, selection, propagation, sparsity, alpha, token_scale, backend
        )

    def replace(self, **changes: Any) -> "GTPSettings":
        """A copy with ``changes`` (not yet checked)."""
        unknown = set(changes) - set(NAMES)
        if unknown:
            raise TypeError(
                f"{', '.join(sorted(unknown))}: not a GTP setting (the settings are {', '.join(NAMES)})"
            )
        return replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``GTPViT`` / ``from_timm`` (num_prop as a list)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(out["num_prop"], tuple):
            out["num_prop"] = list(out["num_prop"])
        return out


NAMES = tuple(f.name for f in fields(GTPSettings))
