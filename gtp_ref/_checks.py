"""Argument checks shared by the ops, the models and the tools: one message shape everywhere.

Every check raises before any work is done, with a ``ValueError`` (a value out of range, an
unknown name, a shape that does not fit) or a ``TypeError`` (a value of the wrong kind: a
string, ``None``, a ``bool`` where a count is meant, a float where an integer is meant), naming
the argument, the value it got and what is valid.  numpy integer and floating-point scalars are
accepted wherever a Python ``int`` / ``float`` is, and are returned as the Python value.
docs/spec.md ("Errors") lists every rule.  The tensor checks live here; the scalar checks and the
token schedules, which the cost model shares without torch, in ``gtp_ref.validate`` and
``gtp_ref.schedule``.
"""

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from gtp_ref.schedule import PROPAGATIONS
from gtp_ref.validate import choice, integer, pair, real

GRAPHS = ("spatial", "semantic", "mixed")
SELECTIONS = (
    "cls_attn_mean",
    "cls_attn_max",
    "img_attn_mean",
    "img_attn_max",
    "diag_attn_mean",
    "diag_attn_max",
    "mixed_attn_mean",
    "mixed_attn_max",
    "sum_attn_max",
    "cos_sim_mean",
    "cos_sim_max",
    "random",
)
GLOBAL_POOLS = ("token", "avg", "map")
# The propagation weight: the paper sweeps [0, 1]; negative weights (without token sizes) are
# allowed for experiments.  Beyond |alpha| = 1 the propagated features dominate the kept ones
# and compound block after block (up to (1 + |alpha| sqrt(deg))^L), which overflows float16 /
# float32 for deep models: refused, so that finite input always gives finite output.
ALPHA_RANGE = (-1.0, 1.0)
INDEX_DTYPES = (torch.int64, torch.int32)  # of the token indices kept / prop


# ---- keywords of the op-level API that were renamed -------------------------------------------------
# (old name -> new name): the old names keep working for one release, with a DeprecationWarning
RENAMED = {"token_scales": "token_sizes", "class_token": "prefix_tokens"}


def renamed_keywords(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` taking the keywords of ``RENAMED`` under their old names too, each with a
    DeprecationWarning that names the new one (they were renamed in gtp-ref 0.2; the old names go in
    the release after).  Positional calls, as the conformance harness makes them, are unchanged."""

    @functools.wraps(op)
    def with_old_names(*args: Any, **kwargs: Any) -> Any:
        old_names = sorted(set(kwargs) & set(RENAMED))
        for old in old_names:  # both names of one argument: refused before anything is said
            if RENAMED[old] in kwargs:
                raise TypeError(
                    f"{op.__name__}() got {old}= and {RENAMED[old]}=: they are one argument "
                    f"({old} is its old name)"
                )
        for old in old_names:
            warnings.warn(
                f"{op.__name__}(..., {old}=...) is deprecated: the argument is {RENAMED[old]}= now "
                f"(the old name goes in the next release)",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs[RENAMED[old]] = kwargs.pop(old)
        return op(*args, **kwargs)

    return with_old_names


# ---- method settings ---------------------------------------------------------------------------
def check_sparsity(sparsity):
    return real("sparsity", sparsity, 0.0, 1.0, low_open=True)


def check_alpha(alpha):
    return real("alpha", alpha, *ALPHA_RANGE)


def check_num_neighbours(num_neighbours, n):
    return integer("num_neighbours", num_neighbours, 0, max(n - 1, 0))


def check_grid(grid, n):
    h, w = pair("grid", grid)
    if h * w != n:
        raise ValueError(f"grid={tuple(grid)!r} must have h*w equal to the {n} image tokens of x_img")
    return h, w


# ---- tensors of the op-level API ---------------------------------------------------------------
def prefix_count(prefix_tokens):
    """The number of prefix tokens that x and the attention map start with: ``prefix_tokens`` an
    int ([CLS], a distillation token, registers), or True / False (one [CLS] token or none)."""
    if isinstance(prefix_tokens, bool) or type(prefix_tokens).__name__ == "bool_":
        return int(prefix_tokens)
    return integer("prefix_tokens", prefix_tokens, minimum=0)


def check_tensor(name, t, ndim, *, floating=None, shape=None):
    """t is a torch.Tensor with ``ndim`` dimensions (and, where given, a floating / integer dtype
    and the dimensions in ``shape``, None = any)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {list(t.shape)}")
    if floating is True and not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if floating is False and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype (torch.long), got {t.dtype}")
    if shape is not None:
        for got, want in zip(t.shape, shape):  # a loop, not any(...): this runs for every op call
            if want is not None and got != want:
                expected = ", ".join("*" if s is None else str(s) for s in shape)
                raise ValueError(f"{name} has shape {list(t.shape)}, expected [{expected}]")
    return t


def check_square_map(attn):
    """attn [B, H, N, N]."""
    check_tensor("attn", attn, 4, floating=True)
    if attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be [B, H, N, N] (square maps), got shape {list(attn.shape)}")
    return attn


def check_propagate_args(
    x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode, *, graph_type, values=True
):
    """All arguments of ``propagate``, for every backend alike.

    ``graph_type`` is the backend's graph class.  Shapes, dtypes and the graph's size are checked
    always (free: they are host-side metadata); with ``values`` also that kept and prop together
    hold every image-token index exactly once and that the token sizes are finite and > 0 (O(B n),
    and it reads the result, a host synchronisation on a GPU: the fast backend passes
    ``values=False`` on CUDA).  Under ``torch.compile`` the value check is skipped (it would
    break the graph).
    """
    choice("propagation", mode, PROPAGATIONS)
    check_alpha(alpha)
    c = prefix_count(prefix_tokens)
    check_tensor("x", x, 3, floating=True)
    B, N, _ = x.shape
    if N < c:
        raise ValueError(f"x has {N} tokens; prefix_tokens={prefix_tokens!r} needs {c} prefix token(s) first")
    n = N - c
    for name, idx in (("kept", kept), ("prop", prop)):
        check_tensor(name, idx, 2, floating=False, shape=(B, None))
        if idx.dtype not in INDEX_DTYPES:  # torch indexes by these; uint8 would be read as a mask
            raise TypeError(f"{name} must have dtype torch.int64 or torch.int32, got {idx.dtype}")
    if kept.shape[1] + prop.shape[1] != n:
        raise ValueError(
            f"kept [{B}, {kept.shape[1]}] and prop [{B}, {prop.shape[1]}] must together "
            f"hold the n = {n} image tokens of x ({N} tokens, {c} of them prefix tokens)"
        )
    if token_sizes is not None:
        check_tensor("token_sizes", token_sizes, 2, floating=True, shape=(B, N))
    if mode == "graph" and G is None:
        raise ValueError("propagation='graph' needs the token graph G, got None")
    if G is not None:
        if not isinstance(G, graph_type):
            raise TypeError(
                f"G must be a {graph_type.__module__}.{graph_type.__name__} (the graph this "
                f"backend's token_graph returns), got {type(G).__name__}"
            )
        shape = tuple(G.shape)
        if shape != (B, n, n):
            raise ValueError(
                f"G is a graph of shape {list(shape)}; x needs [{B}, {n}, {n}] "
                f"(batch {B}, n = {n} image tokens)"
            )
    if values and not torch.compiler.is_compiling():
        check_partition(kept, prop, n)
        if token_sizes is not None:
            check_token_sizes("token_sizes", token_sizes)


def check_token_sizes(name, sizes):
    """Token sizes [B, N] are finite and > 0 (each token stands for a positive number of patches;
    the attention adds log s to its logits): O(B N), a host synchronisation on a GPU."""
    bad = ~((sizes > 0) & sizes.isfinite())  # NaN fails both
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}[{b}, {j}] = {float(sizes[b, j])}: token sizes must be finite and > 0")


def check_partition(kept, prop, n):
    """Every row of kept and prop together holds each of 0..n-1 exactly once: O(B n)."""
    idx = torch.cat([kept, prop], dim=1).long()  # (B, n); any integer dtype
    if idx.numel() == 0:
        return
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= n:
        raise ValueError(
            f"kept / prop hold index {low if low < 0 else high}, outside the n = {n} "
            f"image tokens (indices are 0-based among the image tokens)"
        )
    counts = torch.zeros(idx.shape[0], n, dtype=torch.long, device=idx.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx))  # (B, n): how often each token is named
    if bool((counts != 1).any()):  # lengths add up to n, so some token is named twice
        b, j = (counts > 1).nonzero()[0].tolist()
        raise ValueError(
            f"kept / prop name image token {j} of image {b} {int(counts[b, j])} times; "
            f"each image token must be either kept or propagated, exactly once"
        )


def check_graph_input(x_img, grid, graph, num_neighbours):
    """The arguments of ``token_graph``; returns (grid, n)."""
    choice("graph", graph, GRAPHS)
    check_tensor("x_img", x_img, 3, floating=True)
    n = x_img.shape[1]
    grid = check_grid(grid, n)
    if graph == "spatial":
        integer("num_neighbours", num_neighbours, minimum=0)
    else:
        check_num_neighbours(num_neighbours, n)
    return grid, n


def check_scores_input(attn, selection, prefix_tokens):
    choice("selection", selection, SELECTIONS)
    check_square_map(attn)
    if attn.shape[1] == 0:
        raise ValueError(
            f"attn has shape {list(attn.shape)}: the scores reduce over heads, give at least one"
        )
    c = prefix_count(prefix_tokens)
    if attn.shape[-1] < c:
        raise ValueError(
            f"attn has N = {attn.shape[-1]} tokens; prefix_tokens={prefix_tokens!r} needs {c} prefix token(s)"
        )
    if selection.startswith("cls_attn") and not c:
        raise ValueError(f"selection={selection!r} needs a [CLS] token (prefix_tokens >= 1)")


def check_select_input(scores, num_prop):
    check_tensor("scores", scores, 2, floating=True)
    n = scores.shape[1]
    return integer("num_prop", num_prop, 0, n)
