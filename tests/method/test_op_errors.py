"""Every bad argument of the op-level API is refused at the door, with an error that names it --
identically in every backend (one table, parametrised over the backends, so a new backend
inherits it); the renamed keywords' old names still work, with a warning.  docs/spec.md "Errors"."""

import importlib

import numpy as np
import pytest
import torch

from gtp_ref.backends import MODULES
from gtp_ref.backends.sparse import SparseGraph
from tests.helpers import BACKENDS

G_MARK = object()  # "the backend's own graph of x"


def valid_args(op):
    """Valid arguments of each op: B = 2 images, a 2 x 3 grid, [CLS] first."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    attn = torch.rand(2, 2, 7, 7, generator=g, dtype=torch.float64).softmax(-1)
    return {
        "token_graph": dict(x_img=x[:, 1:], grid=(2, 3), graph="mixed", num_neighbours=2),
        "sparsify_attention": dict(attn=attn, sparsity=0.6),
        "token_scores": dict(attn=attn, selection="mixed_attn_max", prefix_tokens=True, generator=None),
        "select_tokens": dict(scores=torch.rand(2, 6, generator=g, dtype=torch.float64), num_prop=2),
        "propagate": dict(
            x=x,
            G=G_MARK,
            kept=torch.tensor([[0, 1, 3, 5]] * 2),
            prop=torch.tensor([[4, 2]] * 2),
            alpha=0.1,
            token_sizes=None,
            prefix_tokens=True,
            mode="graph",
        ),
    }[op]


def graph_of(ops, x, n_images=None, grid=(2, 3)):
    x_img = x[:n_images, 1 : 1 + grid[0] * grid[1]]
    return ops.token_graph(x_img, grid, "mixed", 2)


def t(*rows):
    return torch.tensor(rows)


# (op, case id, changed arguments (a dict, or a function of (args, ops) -> dict), error, message)
BAD = [
    ("token_graph", "unknown graph", dict(graph="knn"), ValueError, "graph='knn' is not one of"),
    (
        "token_graph",
        "grid too small",
        dict(grid=(2, 2)),
        ValueError,
        r"grid=\(2, 2\) must have h\*w equal to the 6",
    ),
    ("token_graph", "grid of floats", dict(grid=(2.0, 3)), TypeError, r"grid=2.0 must be an integer >= 1"),
    (
        "token_graph",
        "M = n",
        dict(num_neighbours=6),
        ValueError,
        r"num_neighbours=6 must be an integer in \[0, 5\]",
    ),
    (
        "token_graph",
        "M < 0",
        dict(num_neighbours=-1),
        ValueError,
        r"num_neighbours=-1 must be an integer in \[0, 5\]",
    ),
    ("token_graph", "M float", dict(num_neighbours=2.0), TypeError, "num_neighbours=2.0 must be an integer"),
    ("token_graph", "M None", dict(num_neighbours=None), TypeError, "num_neighbours=None must be an integer"),
    (
        "token_graph",
        "spatial, M < 0",
        dict(graph="spatial", num_neighbours=-1),
        ValueError,
        "num_neighbours=-1",
    ),
    (
        "token_graph",
        "x rank 2",
        lambda a, o: dict(x_img=a["x_img"][0]),
        ValueError,
        "x_img must have 3 dimensions",
    ),
    (
        "token_graph",
        "x integer",
        lambda a, o: dict(x_img=a["x_img"].long()),
        TypeError,
        "x_img must have a floating",
    ),
    (
        "token_graph",
        "x a list",
        lambda a, o: dict(x_img=a["x_img"].tolist()),
        TypeError,
        "x_img must be a torch.Tensor",
    ),
    (
        "sparsify_attention",
        "theta 0",
        dict(sparsity=0.0),
        ValueError,
        r"sparsity=0.0 must be a finite number in \(0, 1\]",
    ),
    ("sparsify_attention", "theta < 0", dict(sparsity=-0.1), ValueError, r"sparsity=-0.1 .*\(0, 1\]"),
    ("sparsify_attention", "theta > 1", dict(sparsity=1.5), ValueError, r"sparsity=1.5 .*\(0, 1\]"),
    ("sparsify_attention", "theta nan", dict(sparsity=float("nan")), ValueError, r"sparsity=nan .*\(0, 1\]"),
    ("sparsify_attention", "theta bool", dict(sparsity=True), TypeError, "sparsity=True must be a number"),
    ("sparsify_attention", "theta str", dict(sparsity="0.6"), TypeError, "sparsity='0.6' must be a number"),
    (
        "sparsify_attention",
        "attn rank 3",
        lambda a, o: dict(attn=a["attn"][0]),
        ValueError,
        "attn must have 4",
    ),
    (
        "sparsify_attention",
        "attn not square",
        lambda a, o: dict(attn=a["attn"][..., :5]),
        ValueError,
        r"attn must be \[B, H, N, N\]",
    ),
    (
        "token_scores",
        "unknown selection",
        dict(selection="best"),
        ValueError,
        "selection='best' is not one of",
    ),
    (
        "token_scores",
        "cls without [CLS]",
        dict(selection="cls_attn_max", prefix_tokens=False),
        ValueError,
        r"selection='cls_attn_max' needs a \[CLS\] token",
    ),
    (
        "token_scores",
        "prefix_tokens str",
        dict(prefix_tokens="yes"),
        TypeError,
        "prefix_tokens='yes' must be an integer",
    ),
    (
        "token_scores",
        "prefix_tokens < 0",
        dict(prefix_tokens=-1),
        ValueError,
        "prefix_tokens=-1 must be an integer >= 0",
    ),
    (
        "token_scores",
        "more prefix than tokens",
        dict(prefix_tokens=8),
        ValueError,
        "attn has N = 7 tokens; prefix_tokens=8",
    ),
    ("token_scores", "attn rank 3", lambda a, o: dict(attn=a["attn"][0]), ValueError, "attn must have 4"),
    ("select_tokens", "P > n", dict(num_prop=7), ValueError, r"num_prop=7 must be an integer in \[0, 6\]"),
    ("select_tokens", "P < 0", dict(num_prop=-1), ValueError, r"num_prop=-1 must be an integer in \[0, 6\]"),
    ("select_tokens", "P float", dict(num_prop=2.0), TypeError, "num_prop=2.0 must be an integer"),
    (
        "select_tokens",
        "scores rank 1",
        lambda a, o: dict(scores=a["scores"][0]),
        ValueError,
        "scores must have 2",
    ),
    ("propagate", "unknown mode", dict(mode="merge"), ValueError, "propagation='merge' is not one of"),
    (
        "propagate",
        "alpha inf",
        dict(alpha=float("inf")),
        ValueError,
        r"alpha=inf must be a finite number in \[-1, 1\]",
    ),
    ("propagate", "alpha nan", dict(alpha=float("nan")), ValueError, "alpha=nan"),
    (
        "propagate",
        "alpha 1e308",
        dict(alpha=1e308),
        ValueError,
        r"alpha=1e\+308 must be a finite number in \[-1, 1\]",
    ),
    ("propagate", "alpha str", dict(alpha="0.1"), TypeError, "alpha='0.1' must be a number"),
    ("propagate", "no graph", dict(G=None), ValueError, "propagation='graph' needs the token graph G"),
    (
        "propagate",
        "graph of one image",
        lambda a, o: dict(G=graph_of(o, a["x"], 1)),
        ValueError,
        r"G is a graph of shape \[1, 6, 6\]; x needs \[2, 6, 6\]",
    ),
    (
        "propagate",
        "graph of 5 tokens",
        lambda a, o: dict(G=graph_of(o, a["x"], grid=(1, 5))),
        ValueError,
        r"G is a graph of shape \[2, 5, 5\]; x needs \[2, 6, 6\]",
    ),
    (
        "propagate",
        "another backend's graph",
        lambda a, o: dict(G=foreign_graph(o, a["x"])),
        TypeError,
        "G must be a .* got",
    ),
    (
        "propagate",
        "duplicate index",
        dict(kept=t([0, 1, 1, 5], [0, 1, 3, 5])),
        ValueError,
        "name image token 1 of image 0 2 times",
    ),
    (
        "propagate",
        "kept and prop overlap",
        dict(prop=t([4, 2], [4, 3])),
        ValueError,
        "token 3 of image 1 2 times",
    ),
    (
        "propagate",
        "index out of range",
        dict(prop=t([4, 6], [4, 2])),
        ValueError,
        "index 6, outside the n = 6 image tokens",
    ),
    ("propagate", "negative index", dict(prop=t([4, -1], [4, 2])), ValueError, "index -1, outside"),
    (
        "propagate",
        "not covering",
        dict(prop=t([4], [2])),
        ValueError,
        r"must together hold the n = 6 image tokens",
    ),
    (
        "propagate",
        "kept rank 1",
        lambda a, o: dict(kept=a["kept"][0]),
        ValueError,
        "kept must have 2 dimensions",
    ),
    (
        "propagate",
        "prop of floats",
        lambda a, o: dict(prop=a["prop"].double()),
        TypeError,
        "prop must have an integer",
    ),
    (
        "propagate",
        "kept batch 1",
        lambda a, o: dict(kept=a["kept"][:1]),
        ValueError,
        r"kept has shape \[1, 4\]",
    ),
    (
        "propagate",
        "sizes shape",
        lambda a, o: dict(token_sizes=torch.ones(2, 6, dtype=torch.float64)),
        ValueError,
        r"token_sizes has shape \[2, 6\], expected \[2, 7\]",
    ),
    ("propagate", "x rank 2", lambda a, o: dict(x=a["x"][0]), ValueError, "x must have 3 dimensions"),
    (
        "propagate",
        "prefix_tokens float",
        dict(prefix_tokens=1.0),
        TypeError,
        "prefix_tokens=1.0 must be an integer",
    ),
    (
        "propagate",
        "prefix count off",
        dict(prefix_tokens=2),
        ValueError,
        r"must together hold the n = 5 image tokens",
    ),
    (
        "propagate",
        "negative token size",
        lambda a, o: dict(token_sizes=sizes(a, (1, 3), -1.0)),
        ValueError,
        r"token_sizes\[1, 3\] = -1.0: token sizes must be finite and > 0",
    ),
    (
        "propagate",
        "zero token size",
        lambda a, o: dict(token_sizes=sizes(a, (0, 0), 0.0)),
        ValueError,
        r"token_sizes\[0, 0\] = 0.0: token sizes must be finite and > 0",
    ),
    (
        "propagate",
        "NaN token size",
        lambda a, o: dict(token_sizes=sizes(a, (0, 6), float("nan"))),
        ValueError,
        r"token_sizes\[0, 6\] = nan",
    ),
    (
        "propagate",
        "infinite token size",
        lambda a, o: dict(token_sizes=sizes(a, (1, 2), float("inf"))),
        ValueError,
        r"token_sizes\[1, 2\] = inf",
    ),
]


def sizes(args, where, value):
    """Token sizes of x, all 1 but ``value`` at ``where``."""
    s = torch.ones(args["x"].shape[:2], dtype=args["x"].dtype)
    s[where] = value
    return s


def foreign_graph(ops, x):
    """A graph of the right size from another backend than ``ops``."""
    other = "sparse" if ops.__name__ != "gtp_ref.backends.sparse" else "dense"
    return graph_of(importlib.import_module(MODULES[other]), x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "op, change, error, match", [pytest.param(*c[:1], *c[2:], id=f"{c[0]}: {c[1]}") for c in BAD]
)
def test_bad_op_arguments_are_refused_before_any_work(backend, op, change, error, match):
    ops = importlib.import_module(MODULES[backend])
    args = valid_args(op)
    if args.get("G") is G_MARK:
        args["G"] = graph_of(ops, args["x"])
    getattr(ops, op)(**args)  # the unchanged arguments are valid
    args.update(change(args, ops) if callable(change) else change)
    with pytest.raises(error, match=match):
        getattr(ops, op)(**args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["graph", "mean", "none"])
def test_int32_indices_are_the_int64_ones(backend, mode):
    ops = importlib.import_module(MODULES[backend])
    args = valid_args("propagate")
    args.update(G=graph_of(ops, args["x"]), mode=mode, token_sizes=sizes(args, (0, 0), 1.0))
    want = ops.propagate(**args)
    got = ops.propagate(**{**args, "kept": args["kept"].int(), "prop": args["prop"].int()})
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert torch.equal(ops.to_dense(got[1]), ops.to_dense(want[1]))
    for dtype in (torch.int16, torch.uint8):  # not index dtypes of torch (uint8 would be a mask)
        with pytest.raises(TypeError, match=f"kept must have dtype torch.int64 or torch.int32, got {dtype}"):
            ops.propagate(**{**args, "kept": args["kept"].to(dtype)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars_are_their_python_values(backend):
    ops = importlib.import_module(MODULES[backend])
    a = valid_args("token_graph")
    G = ops.to_dense(ops.token_graph(a["x_img"], (np.int64(2), np.int32(3)), "mixed", np.int64(2)))
    assert torch.equal(G, ops.to_dense(ops.token_graph(**a)))
    s = valid_args("select_tokens")
    assert all(
        torch.equal(u, v)
        for u, v in zip(ops.select_tokens(s["scores"], np.int16(2)), ops.select_tokens(s["scores"], 2))
    )
    m = valid_args("sparsify_attention")["attn"]
    assert torch.equal(ops.sparsify_attention(m, np.float64(0.6)), ops.sparsify_attention(m, 0.6))


def test_sparse_graph_type_is_checked_by_the_other_backends():
    """A SparseGraph passed to the dense backend is refused by type, not by a deep failure."""
    from gtp_ref.backends import dense, sparse

    x = valid_args("propagate")["x"]
    G = sparse.token_graph(x[:, 1:], (2, 3), "mixed", 2)
    assert isinstance(G, SparseGraph)
    with pytest.raises(TypeError, match="G must be a torch.Tensor"):
        dense.propagate(x, G, t([0, 1, 3, 5], [0, 1, 3, 5]), t([4, 2], [4, 2]), 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_old_keyword_names_work_for_one_release_with_a_warning(backend):
    """token_scales= and class_token= (the op-level API's names before token_sizes= and
    prefix_tokens=) give the same results, each with a DeprecationWarning naming the new one;
    both names at once are a TypeError."""
    ops = importlib.import_module(MODULES[backend])
    args = valid_args("propagate")
    args.update(G=graph_of(ops, args["x"]), token_sizes=sizes(args, (0, 0), 1.0))
    want = ops.propagate(**args)
    renamed = {"token_scales": args.pop("token_sizes"), "class_token": args.pop("prefix_tokens")}
    old = {**args, **renamed}
    with pytest.warns(DeprecationWarning) as caught:
        got = ops.propagate(**old)
    assert sorted(str(w.message) for w in caught) == [
        "propagate(..., class_token=...) is deprecated: the argument is prefix_tokens= now (the old name "
        "goes in the "
        "next release)",
        "propagate(..., token_scales=...) is deprecated: the argument is token_sizes= now (the old name "
        "goes in the "
        "next release)",
    ]
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    s = valid_args("token_scores")
    with pytest.warns(DeprecationWarning, match="class_token="):
        assert torch.equal(
            ops.token_scores(s["attn"], s["selection"], class_token=True), ops.token_scores(**s)
        )
    with pytest.raises(TypeError, match="got token_scales= and token_sizes=: they are one argument"):
        ops.propagate(**{**old, "token_sizes": old["token_scales"]})
