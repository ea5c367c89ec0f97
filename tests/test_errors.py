"""Every bad argument is refused at the door, with an error that names it -- identically in every
backend (one table, parametrised over the backends, so a new backend inherits it), in the
models' constructors, and on assignment of the run-time settings.  docs/spec.md "Errors"."""

import importlib

import numpy as np
import pytest
import torch

from gtp_ref import GTPViT
from gtp_ref.backends import MODULES
from gtp_ref.backends.sparse import SparseGraph
from gtp_ref.config import ViTConfig
from gtp_ref.conformance.seeded import flat_model
from gtp_ref.tome import ToMeViT
from gtp_ref.vit import ViT
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


# ---- the models ------------------------------------------------------------------------------
BASE = dict(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2)
GEOMETRY = [  # every geometry argument, for ViT, GTPViT and ToMeViT alike
    (dict(img_size=0), ValueError, "img_size=0 must be an integer >= 1"),
    (dict(img_size=(32, -8)), ValueError, "img_size=-8 must be an integer >= 1"),
    (dict(img_size=(32, 32, 3)), ValueError, r"img_size=\(32, 32, 3\) must be a positive int or a pair"),
    (dict(img_size=32.0), TypeError, "img_size=32.0 must be an integer"),
    (dict(img_size="32"), TypeError, "img_size='32' must be an integer"),
    (dict(img_size=None), TypeError, "img_size=None must be an integer"),
    (dict(img_size=30), ValueError, "not divisible by patch_size=8"),
    (dict(patch_size=0), ValueError, "patch_size=0 must be an integer >= 1"),
    (dict(patch_size=(8, 4)), ValueError, "must be square"),
    (dict(patch_size=True), TypeError, "patch_size=True must be an integer"),
    (dict(in_chans=0), ValueError, "in_chans=0 must be an integer >= 1"),
    (dict(in_chans=3.5), TypeError, "in_chans=3.5 must be an integer"),
    (dict(num_classes=-5), ValueError, "num_classes=-5 must be an integer >= 0"),
    (dict(num_classes="10"), TypeError, "num_classes='10' must be an integer"),
    (dict(embed_dim=0), ValueError, "embed_dim=0 must be an integer >= 1"),
    (dict(embed_dim=15), ValueError, "embed_dim=15 is not divisible by num_heads=2"),
    (dict(depth=0), ValueError, "depth=0 must be an integer >= 1"),
    (dict(depth=-1), ValueError, "depth=-1 must be an integer >= 1"),
    (dict(depth=2.0), TypeError, "depth=2.0 must be an integer"),
    (dict(num_heads=0), ValueError, "num_heads=0 must be an integer >= 1"),
    (dict(num_heads=None), TypeError, "num_heads=None must be an integer"),
    (dict(mlp_ratio="4"), TypeError, "mlp_ratio='4' must be a number"),
    (dict(mlp_ratio=0), ValueError, r"mlp_ratio=0.0 must be a finite number in \(0, inf\]"),
    (dict(mlp_ratio=-1.0), ValueError, "mlp_ratio=-1.0"),
    (dict(mlp_ratio=float("inf")), ValueError, "mlp_ratio=inf"),
    (dict(mlp_ratio=0.01), ValueError, r"mlp_ratio=0.01 gives an MLP of int\(16 \* 0.01\) = 0"),
    (dict(qkv_bias=1), TypeError, "qkv_bias=1 must be True or False"),
    (dict(class_token="no"), TypeError, "class_token='no' must be True or False"),
    (dict(class_token=None), TypeError, "class_token=None must be True or False"),
    (dict(global_pool="max"), ValueError, "global_pool='max' is not one of"),
    (dict(class_token=False), ValueError, r"global_pool='token' needs a \[CLS\] token"),
]
GTP_SETTINGS = [
    (dict(graph="knn"), ValueError, "graph='knn'"),
    (dict(selection="top"), ValueError, "selection='top'"),
    (dict(propagation="merge"), ValueError, "propagation='merge'"),
    (dict(backend="cuda"), ValueError, "backend='cuda'"),
    (dict(sparsity=0.0), ValueError, r"sparsity=0.0 .*\(0, 1\]"),
    (dict(sparsity=1.01), ValueError, "sparsity=1.01"),
    (dict(sparsity=None), TypeError, "sparsity=None must be a number"),
    (dict(alpha=float("nan")), ValueError, "alpha=nan"),
    (dict(alpha=1e308), ValueError, r"alpha=1e\+308 must be a finite number in \[-1, 1\]"),
    (dict(alpha=1.5), ValueError, r"alpha=1.5 must be a finite number in \[-1, 1\]"),
    (dict(token_scale=True, alpha=-0.1), ValueError, "alpha=-0.1 must be >= 0 with token_scale=True"),
    (dict(token_scale="yes"), TypeError, "token_scale='yes' must be True or False"),
    (dict(num_neighbours=-1), ValueError, "num_neighbours=-1"),
    (dict(num_neighbours=16), ValueError, r"num_neighbours=16 must be an integer in \[0, 15\]"),
    (dict(num_neighbours=2.5), TypeError, "num_neighbours=2.5"),
    (dict(num_prop=-1), ValueError, "num_prop=-1"),
    (dict(num_prop=[1, 2, 3]), ValueError, "depth=2"),
    (dict(num_prop=[10, 6]), ValueError, "at most 5"),
    (dict(num_prop=16), ValueError, "at most 15"),
    (dict(num_prop="8"), TypeError, "num_prop='8' must be an integer"),
    (dict(num_prop=[1, 2.0]), TypeError, r"num_prop\[1\]=2.0 must be an integer"),
    (dict(class_token=False, global_pool="avg", selection="cls_attn_mean"), ValueError, "cls_attn_mean"),
]
MODELS = {"ViT": ViT, "GTPViT": GTPViT, "ToMeViT": ToMeViT}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "kwargs, error, match", GEOMETRY, ids=lambda v: repr(v) if isinstance(v, dict) else ""
)
def test_bad_geometry_is_refused(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        flat_model({**BASE, **kwargs}, MODELS[model])


@pytest.mark.parametrize(
    "kwargs, error, match", GTP_SETTINGS, ids=lambda v: repr(v) if isinstance(v, dict) else ""
)
def test_bad_gtp_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        flat_model({**BASE, **kwargs})


def test_numpy_scalars_build_the_same_model():
    as_numpy = dict(
        img_size=np.int64(32),
        patch_size=np.int32(8),
        in_chans=np.int64(3),
        num_classes=np.int64(3),
        embed_dim=np.int64(16),
        depth=np.int64(2),
        num_heads=np.int64(2),
        mlp_ratio=np.float64(4.0),
        qkv_bias=np.bool_(True),
        class_token=np.bool_(True),
        num_prop=np.int64(2),
        num_neighbours=np.int64(3),
        sparsity=np.float64(0.6),
        alpha=np.float32(0.25),
        token_scale=np.bool_(True),
    )
    torch.manual_seed(0)
    a = flat_model(as_numpy)
    torch.manual_seed(0)
    b = flat_model({k: v.item() for k, v in as_numpy.items()})
    assert a.num_prop == b.num_prop == [2, 2] and a.alpha == b.alpha == 0.25 and a.token_scale is True
    assert a.grid == b.grid and a.config == b.config and type(a.config.patches.img_size[0]) is int
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("shape", [(1, 3, 32, 16), (1, 1, 32, 32), (3, 32, 32)])
def test_forward_input_errors(shape):
    model = GTPViT(ViTConfig.of(**BASE))
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 3, 32, 32\], got"):
        model(torch.randn(*shape))


def test_sparse_graph_type_is_checked_by_the_other_backends():
    """A SparseGraph passed to the dense backend is refused by type, not by a deep failure."""
    from gtp_ref.backends import dense, sparse

    x = valid_args("propagate")["x"]
    G = sparse.token_graph(x[:, 1:], (2, 3), "mixed", 2)
    assert isinstance(G, SparseGraph)
    with pytest.raises(TypeError, match="G must be a torch.Tensor"):
        dense.propagate(x, G, t([0, 1, 3, 5], [0, 1, 3, 5]), t([4, 2], [4, 2]), 0.1)


@pytest.mark.parametrize(
    "key, feature",
    [
        ("blocks.0.ls1.gamma", "layer scale"),
        ("reg_token", "register tokens"),
        ("norm_pre.weight", "CLIP-style"),
        ("attn_pool.latent", "attention pooling"),
        ("blocks.1.attn.q_norm.weight", "query / key normalisation"),
        ("fc_norm.weight", r"fc_norm"),  # an average-pooled checkpoint into a [CLS]-pooled model
    ],
)
def test_a_checkpoint_of_another_architecture_is_refused_by_name(key, feature):
    model = GTPViT(ViTConfig.of(**BASE))
    state = {**model.state_dict(), key: torch.zeros(16)}
    with pytest.raises(
        ValueError, match=f"state_dict has '{key}': .*{feature}.*which this model was not built with"
    ):
        model.load_state_dict(state)


# ---- settings assigned to a built model, and inputs ---------------------------------------------
GEOMETRY_KEYS = ("class_token", "global_pool")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs, error, match", GTP_SETTINGS, ids=lambda v: repr(v) if isinstance(v, dict) else ""
)
def test_bad_settings_assigned_to_a_built_model_are_refused(backend, kwargs, error, match):
    """Every setting of the constructor's table, assigned after construction (the others given to
    the constructor): the same error, and the model keeps its old settings."""
    *first, last = [k for k in kwargs if k not in GEOMETRY_KEYS]
    model = flat_model({**BASE, "backend": backend, **{k: v for k, v in kwargs.items() if k != last}})
    before, ops = model.settings, model.ops
    with pytest.raises(error, match=match):
        setattr(model, last, kwargs[last])
    assert model.settings == before and model.ops is ops and model.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_assigned_settings_take_effect(backend):
    """Assigning backend switches the ops; each setting changes the forward as the constructor's would."""
    cfg = dict(BASE, num_prop=2, sparsity=0.6, token_scale=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = flat_model(cfg).eval()
    model.backend = backend
    assert model.ops.name == backend and model.backend == backend
    changes = dict(
        sparsity=0.3,
        alpha=0.5,
        selection="diag_attn_max",
        graph="spatial",
        num_neighbours=2,
        propagation="mean",
        num_prop=[3, 1],
        token_scale=False,
    )
    for name, value in changes.items():
        setattr(model, name, value)
    torch.manual_seed(0)
    built = flat_model({**cfg, **changes, "backend": backend}).eval()
    assert model.settings == built.settings and model.num_prop == [3, 1]
    with torch.no_grad():
        assert torch.allclose(model(x), built(x), rtol=1e-5, atol=1e-6)


def test_a_setting_that_breaks_another_is_refused():
    """A cross-rule: a schedule that 'mean' propagation allows (it appends a token per block) leaves
    a block without an image token under 'graph' propagation."""
    model = GTPViT(ViTConfig.of(**BASE), num_prop=[15, 1], propagation="mean")
    with pytest.raises(ValueError, match="propagates 1 of the 1 image tokens left at block 1"):
        model.propagation = "graph"
    assert model.propagation == "mean"
    with pytest.raises(TypeError, match="settings must be a gtp_ref.settings.GTPSettings"):
        model.settings = {"sparsity": 0.5}
    with pytest.raises(TypeError, match="num_props: not a GTP setting"):
        model.settings.replace(num_props=2)


def test_tome_settings_assigned_are_checked():
    model = ToMeViT(ViTConfig.of(**BASE), r=2)
    with pytest.raises(TypeError, match="fused_attn='yes' must be True or False"):
        model.fused_attn = "yes"
    with pytest.raises(ValueError, match=r"r=-1 must be an integer >= 0"):
        model.r = -1
    assert model.fused_attn is False and model.r == [2, 2]


@pytest.mark.parametrize("model", ["GTPViT dense", "GTPViT sparse", "GTPViT fast", "ToMeViT", "ViT"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8, torch.int64])
def test_an_input_of_another_dtype_is_refused_before_any_work(model, dtype):
    name, _, backend = model.partition(" ")
    net = MODELS[name](
        ViTConfig.of(**BASE), **({"backend": backend, "num_prop": 2} if backend else {})
    ).eval()
    x = (torch.rand(2, 3, 32, 32) * 255).to(dtype)
    with pytest.raises(TypeError, match=f"the input has dtype {dtype}, the model's parameters torch.float32"):
        net(x)
    with torch.no_grad():  # under autocast the input keeps the parameters' dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net(x.float() if dtype != torch.float32 else x).shape == (2, 3)


@pytest.mark.parametrize("model", ["GTPViT", "ToMeViT", "ViT"])
def test_torch_jit_script_says_what_works_instead(model):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation of torch.jit.script
        with pytest.raises(
            TypeError,
            match=r"cannot be compiled by torch.jit.script; use torch.compile\(model\).*"
            r"torch.export.export",
        ):
            torch.jit.script(MODELS[model](ViTConfig.of(**BASE)))


def test_torch_export_works():
    model = GTPViT(ViTConfig.of(**BASE), num_prop=2, sparsity=0.6, backend="fast").eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x))


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
