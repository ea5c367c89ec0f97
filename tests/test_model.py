"""GTPViT: invariants, timm layout, errors, dtypes, devices and gradients."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st

import gtp_ref
from gtp_ref import GTPViT
from gtp_ref._checks import SELECTIONS
from tests.strategies import near_tie

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def plain_vit(state, images, *, patch_size, num_heads, class_token, global_pool):
    """A ViT written from scratch from a timm state_dict: the backbone GTP must reduce to."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch_size)
    x = x.flatten(2).transpose(1, 2)
    if class_token:
        x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], 1)
    x = x + state["pos_embed"]
    C, l = x.shape[-1], 0
    ln = lambda t, name: F.layer_norm(t, (C,), state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)  # noqa: E731
    while f"blocks.{l}.norm1.weight" in state:
        p = f"blocks.{l}."
        B, N, _ = x.shape
        qkv = F.linear(ln(x, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / math.sqrt(C // num_heads)).softmax(-1)
        x = x + F.linear((a @ v).transpose(1, 2).reshape(B, N, C), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        l += 1
    pooled = ln(x, "norm")[:, 0] if global_pool == "token" else ln(x.mean(1), "fc_norm")
    return F.linear(pooled, state["head.weight"], state["head.bias"])


@st.composite
def configs(draw, **fixed):
    """Small GTPViT configurations: rectangular grids, both poolings, any selection and mode."""
    class_token = fixed.get("class_token", draw(st.booleans()))
    patch = draw(st.sampled_from([2, 4]))
    h = draw(st.integers(1, 5))
    w = h if fixed.get("square") else draw(st.integers(1, 5))
    n, depth = h * w, draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    propagation = fixed.get("propagation", draw(st.sampled_from(["graph", "mean", "none"])))
    sel = [s for s in SELECTIONS if class_token or not s.startswith("cls")]
    num_prop, n_l = [], n
    for _ in range(depth):
        P = draw(st.integers(0, n_l - 1))
        num_prop.append(P)
        n_l = n_l - P + (1 if propagation == "mean" and P > 0 else 0)
    cfg = dict(img_size=(h * patch, w * patch), patch_size=patch, in_chans=draw(st.integers(1, 3)),
               num_classes=draw(st.integers(1, 5)), embed_dim=heads * draw(st.integers(1, 4)),
               depth=depth, num_heads=heads, class_token=class_token,
               global_pool="token" if class_token else "avg", num_prop=num_prop,
               graph=draw(st.sampled_from(["spatial", "semantic", "mixed"])),
               num_neighbours=draw(st.integers(0, n - 1)), selection=draw(st.sampled_from(sel)),
               propagation=propagation, sparsity=draw(st.sampled_from([1.0, 0.9, 0.6, 0.3])),
               token_scale=draw(st.booleans()))
    # Negative alpha could make token sizes non-positive: the model refuses it with sizes on.
    cfg["alpha"] = draw(st.floats(0 if cfg["token_scale"] else -1, 1))
    cfg.update({k: v for k, v in fixed.items() if k not in ("class_token", "propagation", "square")})
    return cfg


def build(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = GTPViT(**cfg).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a layout slip shows
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim < 2 else 1 / math.sqrt(p[0].numel())) + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def images_for(cfg, B, seed=1, dtype=torch.float64, ties=False):
    """Random images; ``ties``: integer-valued in [-2, 2], so equal patches and exact ties abound."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    shape = (B, cfg.get("in_chans", 3), *size)
    if ties:
        return torch.randint(-2, 3, shape, generator=g).to(dtype)
    return torch.randn(*shape, generator=g, dtype=dtype)


@given(configs(), st.integers(1, 3))
def test_no_propagation_and_no_sparsity_is_the_plain_vit(cfg, B):
    cfg.update(num_prop=0, sparsity=1.0)
    model = build(cfg)
    x = images_for(cfg, B)
    with torch.no_grad():
        want = plain_vit(model.state_dict(), x, patch_size=cfg["patch_size"], num_heads=cfg["num_heads"],
                         class_token=cfg["class_token"], global_pool=cfg["global_pool"])
        assert torch.allclose(model(x), want, rtol=1e-10, atol=1e-10), cfg


@given(configs(propagation="graph"))
def test_alpha_zero_is_pruning(cfg):
    cfg["alpha"] = 0.0
    x = images_for(cfg, 2)
    with torch.no_grad():
        a = build(cfg)(x, torch.Generator().manual_seed(3))
        b = build({**cfg, "propagation": "none"})(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b), cfg


@given(configs())
def test_each_sample_is_the_same_alone_and_in_a_batch(cfg):
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_max"
    model, x = build(cfg), images_for(cfg, 3)
    with torch.no_grad():
        batched = model.forward_trace(x, margins=True)
        for b in range(3):
            alone = model.forward_trace(x[b:b + 1], margins=True)
            # A near-tie at a selection cut is decided by rounding, which differs between batch
            # sizes; such draws prove nothing either way.  Exact ties (gap 0) are kept.
            assume(not near_tie(alone, batched))
            assert torch.allclose(alone.logits, batched.logits[b:b + 1], rtol=1e-9, atol=1e-10), (b, cfg)


@given(configs(), st.booleans())
def test_no_nan_from_finite_input(cfg, ties):
    model = build(cfg, dtype=torch.float32)
    with torch.no_grad():
        out = model(images_for(cfg, 2, dtype=torch.float32, ties=ties), torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all(), cfg


@given(configs())
def test_token_counts_follow_the_schedule(cfg):
    model = build(cfg)
    with torch.no_grad():
        trace = model.forward_trace(images_for(cfg, 1), torch.Generator().manual_seed(0))
    N = cfg["img_size"][0] * cfg["img_size"][1] // cfg["patch_size"] ** 2 + int(cfg["class_token"])
    for layer, P in zip(trace.layers, cfg["num_prop"]):
        assert layer.tokens == N
        N = N - P + (1 if cfg["propagation"] == "mean" and P > 0 else 0)
        if P:
            assert layer.prop.shape[1] == P
    assert trace.final_tokens == N


def timm_keys(depth, class_token, global_pool):
    keys = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
    keys |= {"cls_token"} if class_token else set()
    keys |= {"fc_norm.weight", "fc_norm.bias"} if global_pool == "avg" else {"norm.weight", "norm.bias"}
    for l in range(depth):
        keys |= {f"blocks.{l}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("factory, depth, C, cls", [
    (gtp_ref.deit_tiny, 12, 192, True), (gtp_ref.deit_small, 12, 384, True),
    (gtp_ref.deit_base, 12, 768, True), (gtp_ref.vit_large_patch16, 24, 1024, True),
    (gtp_ref.eva_large_style, 24, 1024, False),
])
def test_presets_have_timm_state_dicts(factory, depth, C, cls):
    with torch.device("meta"):
        model = factory(num_prop=8)
    sd = model.state_dict()
    assert set(sd) == timm_keys(depth, cls, "token" if cls else "avg")
    assert sd["pos_embed"].shape == (1, 196 + int(cls), C)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * C, C)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * C, C)
    assert sd["head.weight"].shape == (1000, C)


def test_strict_load_of_a_timm_layout_state_dict():
    cfg = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=2, num_heads=2)
    src = build(cfg)
    dst = GTPViT(**cfg, num_prop=3, alpha=0.2).double()
    dst.load_state_dict({k: v.clone() for k, v in src.state_dict().items()}, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


BASE = dict(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(graph="knn"), "graph='knn'"), (dict(selection="top"), "selection='top'"),
    (dict(propagation="merge"), "propagation='merge'"), (dict(global_pool="max"), "global_pool='max'"),
    (dict(backend="cuda"), "backend='cuda'"), (dict(sparsity=0.0), r"sparsity=0.0 .*\(0, 1\]"),
    (dict(sparsity=1.01), "sparsity"), (dict(alpha=float("nan")), "alpha=nan"),
    (dict(num_neighbours=-1), "num_neighbours=-1"), (dict(num_neighbours=16), r"num_neighbours=16 .*\[0, 15\]"),
    (dict(num_prop=-1), "num_prop"), (dict(num_prop=[1, 2, 3]), "depth=2"),
    (dict(num_prop=[10, 6]), "at most 5"), (dict(num_prop=16), "at most 15"),
    (dict(class_token=False), "global_pool='token' needs a \\[CLS\\]"),
    (dict(class_token=False, global_pool="avg", selection="cls_attn_mean"), "cls_attn_mean"),
    (dict(img_size=30), "not divisible by patch_size=8"),
    (dict(token_scale=True, alpha=-0.1), r"alpha=-0.1 must be >= 0 with token_scale=True"),
])
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GTPViT(**{**BASE, **kwargs})


@pytest.mark.parametrize("shape", [(1, 3, 32, 16), (1, 1, 32, 32), (3, 32, 32)])
def test_forward_input_errors(shape):
    model = GTPViT(**BASE)
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 3, 32, 32\], got"):
        model(torch.randn(*shape))


def test_rectangular_images():
    cfg = dict(BASE, img_size=(16, 40), num_prop=2, sparsity=0.6, token_scale=True)
    model = build(cfg)
    with torch.no_grad():
        trace = model.forward_trace(images_for(cfg, 2))
    assert model.grid == (2, 5) and trace.tokens_per_layer == [9, 7]


@pytest.mark.parametrize("backend", ["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_train_mode_gradients_flow_through_kept_tokens(dtype, backend):
    cfg = dict(BASE, num_prop=[3, 2], sparsity=0.6, token_scale=True, alpha=0.3, backend=backend)
    model = build(cfg, dtype=dtype).train()
    x = images_for(cfg, 2, dtype=dtype).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[1].mlp.fc1.weight.grad.abs().sum() > 0


def test_degree_zero_and_k_zero_give_finite_logits():
    # semantic graph with M = 0: every row of Â has degree 0; theta = 0.999: k = 0 at 17 tokens.
    cfg = dict(BASE, graph="semantic", num_neighbours=0, num_prop=4, sparsity=0.999, token_scale=True)
    model = build(cfg, dtype=torch.float32)
    with torch.no_grad():
        assert torch.isfinite(model(images_for(cfg, 2, dtype=torch.float32))).all()


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    cfg = dict(BASE, num_prop=[3, 2], sparsity=0.6, token_scale=True, alpha=0.3)
    model = build(cfg, dtype=dtype)
    x = images_for(cfg, 2, dtype=dtype)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(cpu, gpu, rtol=tol, atol=tol)


# torch.compile's Inductor backend generates C++ on the CPU: it needs a C++ compiler.
has_cxx = pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                             reason="torch.compile on the CPU needs a C++ compiler")


@has_cxx
@pytest.mark.parametrize("backend", ["dense", "fast"])
def test_torch_compile_takes_the_whole_model_in_one_graph(backend):
    """The static-shape backends compile whole (fullgraph=True: no graph break, no host sync) and
    the compiled model equals the eager one in float64 (same decisions, rounding-level logits)."""
    cfg = dict(BASE, img_size=(32, 24), num_prop=[3, 2], sparsity=0.6, token_scale=True, alpha=0.3,
               graph="mixed", num_neighbours=2, selection="mixed_attn_max", backend=backend)
    model = build(cfg)
    x = images_for(cfg, 3)
    torch.compiler.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(x)
        eager = model(x)
    assert torch.allclose(compiled, eager, rtol=1e-12, atol=1e-12), (backend, (compiled - eager).abs().max())
