"""Every bad argument of the models is refused at the door, with an error that names it: the
backbone's config, GTP's settings (in the constructor and on assignment), ToMe's, the input;
checkpoints of another architecture; scripting.  docs/spec.md "Errors"."""

import numpy as np
import pytest
import torch

from gtp_ref import GTPViT
from gtp_ref.config import ViTConfig
from gtp_ref.conformance.seeded import flat_model
from gtp_ref.tome import ToMeViT
from gtp_ref.vit import ViT
from tests.helpers import BACKENDS

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
    (dict(global_pool="median"), ValueError, "global_pool='median' is not one of"),
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
