"""GTPViT: invariants, timm layout, dtypes, devices and gradients.  (Argument errors:
test_model_errors.py.)"""

import shutil

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import gtp_ref
from gtp_ref import GTPViT
from gtp_ref.config import ViTConfig
from gtp_ref.conformance.seeded import flat_model
from tests.helpers import BACKENDS, build, configs, images_for, near_tie, plain_vit


@given(configs(), st.integers(1, 3))
def test_no_propagation_and_no_sparsity_is_the_plain_vit(cfg, B):
    cfg.update(num_prop=0, sparsity=1.0)
    model = build(cfg)
    x = images_for(cfg, B)
    with torch.no_grad():
        want = plain_vit(
            model.state_dict(),
            x,
            patch_size=cfg["patch_size"],
            num_heads=cfg["num_heads"],
            class_token=cfg["class_token"],
            global_pool=cfg["global_pool"],
        )
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
        batched = model.forward_trace(x, record=True)
        for b in range(3):
            alone = model.forward_trace(x[b : b + 1], record=True)
            # A near-tie at a selection cut is decided by rounding, which differs between batch
            # sizes; such draws prove nothing either way.  Exact ties (gap 0) are kept.
            assume(not near_tie(alone, batched))
            assert torch.allclose(alone.logits, batched.logits[b : b + 1], rtol=1e-9, atol=1e-10), (b, cfg)


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
        keys |= {
            f"blocks.{l}.{m}.{p}"
            for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for p in ("weight", "bias")
        }
    return keys


@pytest.mark.parametrize(
    "factory, depth, C, pool, patch",
    [
        (gtp_ref.deit_tiny, 12, 192, "token", 16),
        (gtp_ref.deit_small, 12, 384, "token", 16),
        (gtp_ref.deit_base, 12, 768, "token", 16),
        (gtp_ref.vit_large, 24, 1024, "token", 16),
        (gtp_ref.eva_large, 24, 1024, "avg", 14),  # the authors' EVA-L: [CLS], average pooling
    ],
)
def test_presets_have_timm_state_dicts(factory, depth, C, pool, patch):
    with torch.device("meta"):
        model = factory(num_prop=8)
    sd = model.state_dict()
    assert set(sd) == timm_keys(depth, True, pool)
    assert model.config.prefix.class_token and model.config.head.global_pool == pool
    assert sd["pos_embed"].shape == (1, 196 + 1, C)
    assert sd["patch_embed.proj.weight"].shape == (C, 3, patch, patch)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * C, C)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * C, C)
    assert sd["head.weight"].shape == (1000, C)


def test_strict_load_of_a_timm_layout_state_dict():
    cfg = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=2, num_heads=2)
    src = build(cfg)
    dst = flat_model({**cfg, "num_prop": 3, "alpha": 0.2}).double()
    dst.load_state_dict({k: v.clone() for k, v in src.state_dict().items()}, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


BASE = dict(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2)


GTP = dict(
    BASE,
    num_prop=[3, 2],
    graph="mixed",
    num_neighbours=2,
    selection="mixed_attn_max",
    sparsity=0.6,
    alpha=0.3,
    token_scale=True,
)
METHODS = [*BACKENDS, "tome"]


def method_cfg(method, **extra):
    """GTP at its paper settings on one of the backends, or ToMe, on the BASE geometry."""
    if method == "tome":
        return dict(BASE, r=[3, 2], **extra)
    return dict(GTP, backend=method, **extra)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", [(True, "token"), (True, "avg"), (False, "avg")])
def test_an_empty_batch_gives_empty_logits(method, head):
    cfg = method_cfg(method, class_token=head[0], global_pool=head[1])
    with torch.no_grad():
        out = build(cfg)(images_for(cfg, 0))
    assert out.shape == (0, BASE["num_classes"]) and out.dtype == torch.float64


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_image_gives_nan_logits_and_leaves_the_others_alone(method, bad):
    """Decided: an image with a NaN or infinite pixel gets NaN logits (every entry), in every
    backend and in ToMe; no error (it would need a host synchronisation), and the other images
    of the batch get exactly what they get alone."""
    cfg = method_cfg(method)
    model, x = build(cfg), images_for(cfg, 3)
    x[1, 0, 5, 7] = bad
    with torch.no_grad():
        out = model(x)
        alone = torch.cat([model(x[b : b + 1]) for b in (0, 2)])
    assert out[1].isnan().all(), (method, out[1])
    assert torch.allclose(out[[0, 2]], alone, rtol=1e-12, atol=1e-12), method


def test_num_prop_can_be_changed_and_is_checked_on_assignment():
    model = GTPViT(ViTConfig.of(**BASE), num_prop=2)
    model.num_prop = 3
    assert model.num_prop == [3, 3]
    model.num_prop = [4, 0]
    assert model.num_prop == [4, 0]
    import numpy as np

    model.num_prop = np.int64(1)
    assert model.num_prop == [1, 1] and all(type(P) is int for P in model.num_prop)
    for bad, error, match in [
        (16, ValueError, "at most 15"),
        ([1], ValueError, "depth=2"),
        (-1, ValueError, r"num_prop=-1 must be an integer >= 0"),
        ("3", TypeError, "num_prop='3' must be an integer"),
        (2.0, TypeError, "num_prop=2.0"),
        (None, TypeError, "num_prop=None"),
        (True, TypeError, "num_prop=True"),
    ]:
        with pytest.raises(error, match=match):
            model.num_prop = bad
        assert model.num_prop == [1, 1], "a refused assignment leaves the schedule as it was"


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
has_cxx = pytest.mark.skipif(
    not any(map(shutil.which, ("g++", "c++", "clang++"))),
    reason="torch.compile on the CPU needs a C++ compiler",
)


@has_cxx
@pytest.mark.parametrize("backend", ["dense", "fast"])
def test_torch_compile_takes_the_whole_model_in_one_graph(backend):
    """The static-shape backends compile whole (fullgraph=True: no graph break, no host sync) and
    the compiled model equals the eager one in float64 (same decisions, rounding-level logits)."""
    cfg = dict(
        BASE,
        img_size=(32, 24),
        num_prop=[3, 2],
        sparsity=0.6,
        token_scale=True,
        alpha=0.3,
        graph="mixed",
        num_neighbours=2,
        selection="mixed_attn_max",
        backend=backend,
    )
    model = build(cfg)
    x = images_for(cfg, 3)
    torch.compiler.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(x)
        eager = model(x)
    assert torch.allclose(compiled, eager, rtol=1e-12, atol=1e-12), (backend, (compiled - eager).abs().max())


@given(configs(propagation="graph"))
def test_the_provenance_follows_every_patch(cfg):
    """record=True: each block's propagated patches are marked with the block, every edge runs from
    a patch propagated there to a patch kept there with Â's weight, and the final sizes sit on the
    patches kept to the end -- the same in every backend."""
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_max"
    x = images_for(cfg, 2)
    traces = {}
    for backend in BACKENDS:
        with torch.no_grad():
            traces[backend] = build({**cfg, "backend": backend}).forward_trace(x, record=True)
    assume(not near_tie(*traces.values()))
    trace, n = traces["dense"], build(cfg).num_image_tokens
    prov = trace.provenance
    assert prov.propagated_at.shape == (2, n)
    for l, P in enumerate(cfg["num_prop"]):
        assert ((prov.propagated_at == l).sum(1) == P).all(), (l, P)
    for edges in prov.edges:
        l = int(edges["block"])
        assert (prov.propagated_at[edges["image"], edges["src"]] == l).all(), (
            "the source was propagated there"
        )
        receiver = prov.propagated_at[edges["image"], edges["dst"]]
        assert ((receiver == -1) | (receiver > l)).all(), "the receiver was kept there"
        assert (edges["weight"] > 0).all()
    kept = prov.propagated_at == -1
    assert ((prov.final_sizes > 0) == kept).all()
    if not cfg["token_scale"]:
        assert (prov.final_sizes[kept] == 1).all()
    for backend in ("sparse", "fast"):
        other = traces[backend].provenance
        assert torch.equal(other.propagated_at, prov.propagated_at), backend
        assert torch.allclose(other.final_sizes, prov.final_sizes, rtol=1e-9, atol=1e-12), backend
