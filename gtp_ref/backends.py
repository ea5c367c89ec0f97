"""A backend: one implementation of GTP's six ops (the op-level API of docs/spec.md), and
optionally a fused attention that does a block's attention and the token scores in one pass.

``get_backend("dense" | "sparse" | "fast")`` returns the ``BACKEND`` object of that module;
``Backend.of(obj)`` wraps any object with the six ops (how the conformance suite composes a
model from the implementation under test).
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gtp_ref._checks import BACKENDS, choice

OPS = ("token_graph", "to_dense", "sparsify_attention", "token_scores", "select_tokens", "propagate")


@dataclass(frozen=True)
class Backend:
    """The ops a GTP model calls, each with the signature of ``gtp_ref.dense``'s.

    ``attend_and_score(block, x, token_sizes, sparsity, selection, class_token)`` -> (x + Attn(LN1 x),
    scores or None), or None where it does not apply (the model then takes the explicit path).
    """

    name: str
    token_graph: Callable[..., Any]
    to_dense: Callable[..., Any]
    sparsify_attention: Callable[..., Any]
    token_scores: Callable[..., Any]
    select_tokens: Callable[..., Any]
    propagate: Callable[..., Any]
    attend_and_score: Callable[..., Any] | None = None

    @classmethod
    def of(cls, ops: Any, name: str | None = None) -> "Backend":
        """A Backend of any object (a module, an adapter) that has the six ops."""
        missing = [op for op in OPS if not callable(getattr(ops, op, None))]
        if missing:
            raise TypeError(f"{ops!r} lacks {', '.join(missing)} (the op-level API is {', '.join(OPS)})")
        return cls(name or getattr(ops, "__name__", type(ops).__name__), *(getattr(ops, op) for op in OPS))


def get_backend(name: str) -> Backend:
    """The backend called ``name``: "dense" (the reference), "sparse" (edge lists) or "fast" (GPU)."""
    choice("backend", name, BACKENDS)
    if name == "dense":
        from gtp_ref import dense as module
    elif name == "sparse":
        from gtp_ref import sparse as module
    else:
        from gtp_ref import fast as module
    return module.BACKEND
