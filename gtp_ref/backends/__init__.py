"""The backends: implementations of GTP's op-level API, and the one registry of them.

A backend is a module with the six ops of ``OPS`` (docs/spec.md: the signatures of the dense
reference's) and, optionally, ``attention``: a block's attention and the token scores in one pass
(``Backend.attention`` says its interface).  ``NAMES`` lists the backends, ``get_backend(name)``
returns one as a ``Backend`` object, and ``Backend.of(obj)`` wraps any object that has the six ops
-- the missing-op check every caller shares (the models, the conformance suite).

    dense    gtp_ref.backends.dense   the reference: readable matrix algebra (graph, select, propagate)
    sparse   gtp_ref.backends.sparse  edge lists: memory and work scale with the graph's edges
    fast     gtp_ref.backends.fast    static shapes, no host synchronisation, compiled kernels

Nothing here imports a backend until it is asked for (``fast`` brings Triton where installed).
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gtp_ref.validate import choice

OPS = ("token_graph", "to_dense", "sparsify_attention", "token_scores", "select_tokens", "propagate")
MODULES = {
    "dense": "gtp_ref.backends.dense",
    "sparse": "gtp_ref.backends.sparse",
    "fast": "gtp_ref.backends.fast",
}
NAMES = tuple(MODULES)


@dataclass(frozen=True)
class Backend:
    """The ops a GTP model calls, each with the signature of ``gtp_ref.backends.dense``'s.

    ``attention(q, k, v, token_sizes, sparsity, selection, prefix_tokens, bias, scale)``, where a
    backend has one: q, k, v [B, H, N, d] (the scaled query is ``q * scale``), token sizes [B, N]
    or None, theta, the selection (None: no scores needed), the prefix-token count and a
    relative-position bias [B or 1, H, N, N] or None ->
    (Att v [B, N, H d] with the sparsified map, scores [B, n] or None), or None where it does not
    apply to these inputs (the model then takes the explicit path).  The caller applies the
    output projection.
    """

    name: str
    token_graph: Callable[..., Any]
    to_dense: Callable[..., Any]
    sparsify_attention: Callable[..., Any]
    token_scores: Callable[..., Any]
    select_tokens: Callable[..., Any]
    propagate: Callable[..., Any]
    attention: Callable[..., Any] | None = None

    @classmethod
    def of(cls, ops: Any, name: str | None = None) -> "Backend":
        """A Backend of any object (a module, an adapter) that has the six ops (and maybe
        ``attention``); TypeError naming the ops it lacks."""
        missing = [op for op in OPS if not callable(getattr(ops, op, None))]
        if missing:
            raise TypeError(
                f"{getattr(ops, '__name__', ops)!r} lacks {', '.join(missing)} "
                f"(the op-level API is {', '.join(OPS)})"
            )
        attention = getattr(ops, "attention", None)
        return cls(
            name or getattr(ops, "__name__", type(ops).__name__),
            *(getattr(ops, op) for op in OPS),
            attention if callable(attention) else None,
        )


_LOADED: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of ``NAMES``)."""
    choice("backend", name, NAMES)
    if name not in _LOADED:
        _LOADED[name] = Backend.of(importlib.import_module(MODULES[name]), name)
    return _LOADED[name]
