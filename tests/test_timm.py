"""GTP and ToMe on timm models: the support matrix of ``from_timm`` / ``tome_from_timm``, each entry
checked against the timm model itself with random weights (every parameter, norms, embeddings and
layer scales included), the refusals, and the MAC count of a timm model.  Skipped, with the reason,
where timm cannot be imported."""
import math

import numpy as np
import pytest
import torch

from complexity.backbone import PRESETS, backbone_macs
from gtp_ref import from_timm, tome_from_timm
from gtp_ref.cost import measure_macs
from tests.helpers import import_timm

timm = import_timm()
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)

# (what it covers, timm model name or None for VisionTransformer(**kwargs), kwargs); depths cut to keep CI fast
SUPPORTED = [
    ("DeiT-Ti", "deit_tiny_patch16_224", dict(depth=2)),
    ("DeiT-S", "deit_small_patch16_224", dict(depth=2)),
    ("DeiT-B", "deit_base_patch16_224", dict(depth=1)),
    ("ViT-L/16", "vit_large_patch16_224", dict(depth=1)),
    ("ViT-H/14", "vit_huge_patch14_224", dict(depth=1, img_size=112)),
    ("patch 8", "vit_small_patch8_224", dict(depth=1, img_size=64)),
    ("patch 32", "vit_base_patch32_224", dict(depth=1)),
    ("384 px", "vit_base_patch16_384", dict(depth=1)),
    ("non-square image", "vit_small_patch16_224", dict(depth=2, img_size=(128, 224))),
    ("no class token, average pooling", "vit_small_patch16_224", dict(depth=2, class_token=False, global_pool="avg")),
    ("class token, average pooling", "vit_small_patch16_224", dict(depth=2, global_pool="avg")),
    ("class token pooling with fc_norm", "vit_small_patch16_224", dict(depth=2, fc_norm=True)),
    ("layer scale (DeiT-III)", "deit3_small_patch16_224", dict(depth=2)),
    ("registers, no_embed_class, layer scale (DINOv2)", "vit_small_patch14_reg4_dinov2", dict(depth=2, img_size=112)),
    ("a register and no class token, average pooling", None,
     dict(TINY, class_token=False, reg_tokens=1, no_embed_class=True, global_pool="avg")),
    ("norm before average pooling (*_gap_*)", "vit_base_patch16_gap_224", dict(depth=1)),
    ("norm_pre, eps 1e-5, no patch bias (CLIP)", "vit_base_patch16_clip_224", dict(depth=1)),
    ("no head (MAE weights)", "vit_base_patch16_224.mae", dict(depth=1, num_classes=0)),
    ("no qkv bias", None, dict(TINY, qkv_bias=False)),
    ("QuickGELU (OpenAI CLIP)", "vit_base_patch16_clip_quickgelu_224", dict(depth=1)),
    ("tanh GELU, average pooling (SigLIP *_gap_*)", "vit_base_patch16_siglip_gap_224", dict(depth=1)),
    ("RmsNorm everywhere, norm after the patch embedding", None,
     dict(TINY, norm_layer="rmsnorm", embed_norm_layer="rmsnorm", pre_norm=True)),
    ("no final norm", "vit_base_patch16_radio_v3", dict(depth=1, img_size=64)),
    ("distilled DeiT (two prefix tokens, two heads)", "deit_tiny_distilled_patch16_224", dict(depth=2)),
]
REFUSED = [
    ("post-norm blocks", "vit_base_patch16_rpn_224", dict(depth=1), r"ResPostBlock \(post-norm"),
    ("map pooling", None, dict(TINY, global_pool="map"), "global_pool='map'"),
    ("max pooling", None, dict(TINY, global_pool="max"), "global_pool='max'"),
    ("hybrid stem", "vit_small_r26_s32_224", dict(depth=1), "patch embedding is a HybridEmbed"),
    ("another model class (EVA-02)", "eva02_tiny_patch14_224", dict(depth=1), "model is a Eva"),
    ("image size not divisible by the patch", None, dict(TINY, img_size=36), "not divisible by the patch"),
    ("q/k norm", None, dict(TINY, qk_norm=True), "query norm"),
    ("SwiGLU MLP", None, dict(TINY, mlp_layer=timm.layers.SwiGLU), "only an Mlp"),
    ("dynamic image size", None, dict(TINY, dynamic_img_size=True), "dynamic image size"),
]


def randomise(model):
    """Every parameter random, with the scale of its kind, so that no layout slip can hide."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token", "reg_token")):
                p.copy_(z / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * z)
            elif name.endswith("gamma"):  # layer scale
                p.copy_(0.5 + 0.2 * z)
            else:
                p.copy_(0.5 * z)
    return model


def timm_model(name, kwargs, dtype=torch.float64):
    model = VisionTransformer(**kwargs) if name is None else timm.create_model(name, pretrained=False, **kwargs)
    return randomise(model.to(dtype)).eval()


def images(model, B=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, *model.patch_embed.img_size, generator=g, dtype=dtype)


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("what, name, kwargs", SUPPORTED, ids=[s[0] for s in SUPPORTED])
def test_no_reduction_is_the_timm_model(what, name, kwargs):
    """num_prop = 0, sparsity = 1: GTP's logits are the timm model's (float64: rel <= 1e-12)."""
    model = timm_model(name, kwargs)
    x = images(model)
    gtp = from_timm(model, num_prop=0, sparsity=1.0)
    assert next(gtp.parameters()).dtype == torch.float64 and not gtp.training
    with torch.no_grad():
        want, got = model(x), gtp(x)
    assert got.shape == want.shape and rel_err(got, want) <= 1e-12, (what, rel_err(got, want))
    if gtp.num_prefix_tokens <= int(gtp.class_token):  # ToMe: no registers (the official protects [CLS] only)
        with torch.no_grad():
            tome = tome_from_timm(model, r=0)(x)
        assert rel_err(tome, want) <= 1e-12, (what, "ToMe r=0", rel_err(tome, want))


@pytest.mark.parametrize("what, name, kwargs", [SUPPORTED[1], SUPPORTED[12], SUPPORTED[13]],
                         ids=[SUPPORTED[i][0] for i in (1, 12, 13)])
def test_float32_is_the_timm_model_too(what, name, kwargs):
    model = timm_model(name, kwargs, torch.float32)
    x = images(model, dtype=torch.float32)
    with torch.no_grad():
        want, got = model(x), from_timm(model, num_prop=0, sparsity=1.0)(x)
    assert rel_err(got, want) <= 1e-5, (what, rel_err(got, want))


PREFIXED = [SUPPORTED[i] for i in (13, 14, 10)] + [s for s in SUPPORTED if s[0].startswith("distilled")]


@pytest.mark.parametrize("backend", ["dense", "sparse", "fast"])
@pytest.mark.parametrize("what, name, kwargs", PREFIXED, ids=[s[0] for s in PREFIXED])
def test_gtp_runs_on_every_backend_with_prefix_tokens(what, name, kwargs, backend):
    """With registers / without [CLS]: prefix tokens are never selected or propagated, keep size 1,
    and the backends agree."""
    model = timm_model(name, kwargs)
    x = images(model)
    settings = dict(num_prop=3, sparsity=0.6, token_scale=True, alpha=0.2, selection="mixed_attn_max")
    gtp = from_timm(model, backend=backend, **settings)
    dense = from_timm(model, **settings)
    with torch.no_grad():
        trace = gtp.forward_trace(x, record=True)
        want = dense(x)
    c, n = gtp.num_prefix_tokens, gtp.num_image_tokens
    assert trace.tokens_per_layer[-1] == c + n - 3 * len(gtp.blocks)
    assert all(int(layer.prop.max()) < layer.tokens - c for layer in trace.layers), "indices are image tokens"
    assert torch.allclose(trace.logits, want, rtol=1e-9, atol=1e-12), (what, backend)


def test_the_converted_model_keeps_device_dtype_and_mode():
    model = timm_model("deit_tiny_patch16_224", dict(depth=1), torch.float32).train()
    gtp = from_timm(model, num_prop=2)
    assert gtp.training and next(gtp.parameters()).dtype == torch.float32
    assert gtp.grid == (14, 14) and gtp.num_prop == [2]


@pytest.mark.parametrize("what, name, kwargs, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_cannot_be_represented_is_refused_by_name(what, name, kwargs, message):
    try:
        model = VisionTransformer(**kwargs) if name is None else timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, RuntimeError, AssertionError) as e:  # an older timm without the option
        pytest.skip(f"this timm ({timm.__version__}) cannot build it: {e}")
    with pytest.raises(ValueError, match=message):
        from_timm(model)
    with pytest.raises(ValueError, match=message):
        tome_from_timm(model)


@pytest.mark.parametrize("name, kwargs", [("vit_small_patch14_reg4_dinov2", dict(depth=1, img_size=56)),
                                          ("deit_tiny_distilled_patch16_224", dict(depth=1))])
def test_tome_refuses_prefix_tokens_beyond_cls(name, kwargs):
    with pytest.raises(ValueError, match="prefix tokens beyond \\[CLS\\]"):
        tome_from_timm(timm_model(name, kwargs), r=2)


def test_the_registry_survey_names_every_refusal():
    """python -m gtp_ref.support on a few models of each kind: converted or refused with the reason."""
    from gtp_ref.apps import support
    names = ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_base_patch16_clip_quickgelu_224",
             "eva02_tiny_patch14_224", "vit_small_r26_s32_224", "samvit_base_patch16"]
    rows = {r["name"]: r for r in support.survey(names=names)}
    assert set(rows) == set(names)
    assert [n for n in names if rows[n]["converted"]] == names[:3]
    for n in names[3:]:
        assert rows[n]["reason"], n
    table = support.table(list(rows.values()))
    assert "converts 3 of the 6 models" in table and "refused, by reason" in table


def test_a_strict_key_match_is_no_proof():
    """A post-norm model's state_dict loads into GTPViT (same keys) -- from_timm looks at the modules."""
    from gtp_ref import GTPViT
    model = timm.create_model("vit_base_patch16_rpn_224", pretrained=False, depth=1)
    GTPViT(depth=1, class_token=False, global_pool="avg", qkv_bias=False).load_state_dict(model.state_dict())
    # ... the keys match (strict), ...
    with pytest.raises(ValueError, match="post-norm"):  # ... the architecture does not
        from_timm(model)


def test_macs_of_timm_deit_small_equal_the_cost_model():
    """The flop counter sees the fused attention on the CPU too: timm's DeiT-S at batch 1 is the
    complexity model's 4.599 GMACs exactly."""
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    macs = measure_macs(model, torch.randn(1, 3, 224, 224))
    assert macs["total"] == macs["backbone"] == backbone_macs(PRESETS["deit_small"])["total"], macs


def test_preprocessing_is_timms_evaluation_transform(tmp_path):
    """Pillow + torch reproduce timm's eval transform (resize by crop_pct, centre crop, normalise)."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from gtp_ref.apps.preprocess import Preprocessing, load_image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    image = load_image(tmp_path / "noise.png")
    for name in ("deit_small_patch16_224", "vit_base_patch16_clip_224"):
        model = timm.create_model(name, pretrained=False, depth=1)
        want = create_transform(**resolve_data_config({}, model=model))(image)
        got = Preprocessing.of(model)(image)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5, name


def test_throughput_benchmark_of_a_timm_model(tmp_path):
    """``python -m gtp_ref.bench throughput --timm NAME --checkpoint FILE`` (a smoke run, no timing asserted)."""
    import json
    import subprocess
    import sys
    checkpoint = tmp_path / "deit_t.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), checkpoint)
    r = subprocess.run([sys.executable, "-m", "gtp_ref.bench", "throughput", "--timm", "deit_tiny_patch16_224",
                        "--checkpoint", str(checkpoint), "--num-prop", "16", "--batches", "1", "--repeats", "1",
                        "--methods", "baseline_fused", "gtp_fast", "tome", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["num_prop"]) for x in rows] == [("baseline_fused", 0), ("gtp_fast", 16), ("tome", 16)]
    assert all(x["speedup"] > 0 for x in rows) and rows[1]["expected_speedup"] > 1.9


def test_dropout_in_training_mode_is_refused_by_name():
    """gtp_ref's models apply no dropout: a timm model in training mode with dropout or drop path
    is refused (the converted model would be silently deterministic); in eval mode it converts,
    and putting the converted model into training mode warns."""
    import warnings
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2, drop_rate=0.1, drop_path_rate=0.2)
    with pytest.raises(ValueError, match=r"training mode with dropout or drop path \(blocks.1.drop_path1 \(DropPath "
                                         r"p=0.2\).*convert it in eval mode"):
        from_timm(model)
    with pytest.raises(ValueError, match="training mode with dropout"):
        tome_from_timm(model)
    gtp = from_timm(model.eval())
    assert not gtp.training and "head_drop (Dropout p=0.1)" in gtp.dropout_not_applied
    with pytest.warns(UserWarning, match="applies no dropout or drop path.*head_drop"):
        gtp.train()
    plain = from_timm(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1))  # train mode, no dropout
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.train()


def test_mixed_parameter_dtypes_are_refused():
    model = timm_model("deit_tiny_patch16_224", dict(depth=2), torch.float32)
    model.blocks[1].half()
    with pytest.raises(ValueError, match=r"several dtypes \(torch.float16, torch.float32\)"):
        from_timm(model)


def test_the_survey_command_checks_its_arguments_first(tmp_path):
    from gtp_ref.apps import support
    from tests.helpers import command
    r = command(support.main, "--json-out", tmp_path / "rows.txt")
    assert r.returncode == 2 and "--json-out" in r.stderr and "must end in .json" in r.stderr, r.stderr
