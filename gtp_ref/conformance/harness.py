"""The implementation under test, the oracle, and assertions that say what failed.

The implementation is the module named by ``GTP_IMPL`` (default ``gtp_ref.backends.sparse``); it must
expose the op-level API below.  It is called with CPU torch tensors (``numpy.asarray`` turns
them into arrays at no cost) and may return torch tensors or anything ``numpy.asarray``
accepts; graphs are opaque to the suite except through the module's own ``to_dense``.
The oracle is always ``gtp_ref.backends.dense``.
"""

import importlib
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gtp_ref.backends import Backend
from gtp_ref.backends import dense as oracle  # noqa: F401  (the suite's modules import it from here)

IMPL_NAME = os.environ.get("GTP_IMPL", "gtp_ref.backends.sparse")


class ImplementationError(Exception):
    """The module under test cannot be used at all (import failure, missing function)."""


def load_impl(name: str = IMPL_NAME) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 -- any import failure is the user's to see
        raise ImplementationError(f"GTP_IMPL={name!r} cannot be imported: {type(e).__name__}: {e}") from e
    try:
        Backend.of(module, name)  # the missing-op check every caller shares
    except TypeError as e:
        raise ImplementationError(f"GTP_IMPL={name!r}: {e}") from None
    return module


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """An implementation's output as a CPU torch tensor (dtype of ``like`` for floats)."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    t = t.detach().cpu()
    if like is not None and t.is_floating_point():
        t = t.to(like.dtype)
    return t


class Ops:
    """The implementation's ops with outputs converted to torch (for composing a model)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def backend(self) -> Backend:
        """These ops as a ``gtp_ref.backends.Backend``, which a GTPViT's ``ops`` can be."""
        return Backend.of(self, getattr(self.module, "__name__", "implementation"))

    @staticmethod
    def _back(value: Any, like: Tensor) -> Tensor:
        """An output as a tensor of ``like``'s float dtype on ``like``'s device."""
        return as_tensor(value, like).to(like.device)

    def token_graph(
        self, x_img: Tensor, grid: tuple[int, int], graph: str = "mixed", num_neighbours: int = 4
    ) -> Any:
        return self.module.token_graph(x_img, tuple(grid), graph, num_neighbours)

    def to_dense(self, G: Any) -> Tensor:
        return as_tensor(self.module.to_dense(G))

    def sparsify_attention(self, attn: Tensor, sparsity: float) -> Tensor:
        return self._back(self.module.sparsify_attention(attn, sparsity), attn)

    def token_scores(
        self,
        attn: Tensor,
        selection: str,
        prefix_tokens: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return self._back(self.module.token_scores(attn, selection, prefix_tokens, generator), attn)

    def select_tokens(self, scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
        kept, prop = self.module.select_tokens(scores, num_prop)
        return self._back(kept, scores).long(), self._back(prop, scores).long()

    def propagate(
        self,
        x: Tensor,
        G: Any,
        kept: Tensor,
        prop: Tensor,
        alpha: float,
        token_sizes: Tensor | None = None,
        prefix_tokens: bool = True,
        mode: str = "graph",
    ) -> tuple[Tensor, Any, Tensor | None]:
        x2, G2, s2 = self.module.propagate(x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode)
        return self._back(x2, x), G2, None if s2 is None else self._back(s2, x)


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return repr(value)


def call(op: str, **params: Any) -> str:
    """'op(a=..., b=...)' with tensors shown by shape and dtype, for failure messages."""
    return f"{IMPL_NAME}.{op}(" + ", ".join(f"{k}={describe(v)}" for k, v in params.items()) + ")"


def reproduce(test: str) -> str:
    return (
        f"reproduce: GTP_IMPL={IMPL_NAME} python -m pytest --pyargs gtp_ref.conformance -k {test} "
        "(hypothesis prints the failing example and its seed above)"
    )


def assert_shape(what: str, got: Any, shape: Sequence[int], *, test: str) -> None:
    """The output has exactly ``shape``."""
    got = as_tensor(got)
    if tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{what}: shape {list(got.shape)}, expected {list(shape)}\n{reproduce(test)}")


def assert_close(what: str, got: Any, want: Tensor, *, rtol: float, atol: float, test: str) -> None:
    """got ≈ want elementwise; on failure name the first differing entry, both values and the call."""
    got = as_tensor(got, want)
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(
            f"{what}: shape {list(got.shape)}, expected {list(want.shape)}\n{reproduce(test)}"
        )
    bad = ~torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {want.numel()} entries differ; at index {list(idx)} found "
            f"{got[idx].item()!r}, expected {want[idx].item()!r} (rtol={rtol}, "
            f"atol={atol})\n{reproduce(test)}"
        )


def assert_equal(what: str, got: Any, want: Tensor, *, test: str) -> None:
    """Exact equality (indices, 0/1 patterns); on failure show both."""
    got = as_tensor(got).to(want.dtype)
    if tuple(got.shape) != tuple(want.shape) or not torch.equal(got, want):
        raise AssertionError(
            f"{what}:\n  found    {got.tolist()}\n  expected {want.tolist()}\n{reproduce(test)}"
        )
