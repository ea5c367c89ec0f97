"""GTP and ToMe on timm models: the support matrix of ``from_timm`` / ``tome_from_timm``, each entry
checked against the timm model itself with random weights (every parameter, norms, embeddings and
layer scales included), the refusals, and the MAC count of a timm model.  Skipped, with the reason,
where timm cannot be imported."""

import json
import math

import numpy as np
import pytest
import torch

from complexity.backbone import backbone_macs
from gtp_ref import from_timm, tome_from_timm
from gtp_ref.config import PRESETS, ViTConfig
from gtp_ref.cost import measure_macs
from tests.helpers import import_timm, replay_pruning

timm = import_timm()
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)

# (what it covers, timm model name or None for VisionTransformer(**kwargs), kwargs); depths cut
# to keep CI fast
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
    (
        "no class token, average pooling",
        "vit_small_patch16_224",
        dict(depth=2, class_token=False, global_pool="avg"),
    ),
    ("class token, average pooling", "vit_small_patch16_224", dict(depth=2, global_pool="avg")),
    ("class token pooling with fc_norm", "vit_small_patch16_224", dict(depth=2, fc_norm=True)),
    ("layer scale (DeiT-III)", "deit3_small_patch16_224", dict(depth=2)),
    (
        "registers, no_embed_class, layer scale (DINOv2)",
        "vit_small_patch14_reg4_dinov2",
        dict(depth=2, img_size=112),
    ),
    (
        "a register and no class token, average pooling",
        None,
        dict(TINY, class_token=False, reg_tokens=1, no_embed_class=True, global_pool="avg"),
    ),
    ("norm before average pooling (*_gap_*)", "vit_base_patch16_gap_224", dict(depth=1)),
    ("norm_pre, eps 1e-5, no patch bias (CLIP)", "vit_base_patch16_clip_224", dict(depth=1)),
    ("no head (MAE weights)", "vit_base_patch16_224.mae", dict(depth=1, num_classes=0)),
    ("no qkv bias", None, dict(TINY, qkv_bias=False)),
    ("max pooling", None, dict(TINY, global_pool="max")),
    ("the mean of average and max pooling", None, dict(TINY, global_pool="avgmax", class_token=False)),
    ("QuickGELU (OpenAI CLIP)", "vit_base_patch16_clip_quickgelu_224", dict(depth=1)),
    ("tanh GELU, average pooling (SigLIP *_gap_*)", "vit_base_patch16_siglip_gap_224", dict(depth=1)),
    (
        "RmsNorm everywhere, norm after the patch embedding",
        None,
        dict(TINY, norm_layer="rmsnorm", embed_norm_layer="rmsnorm", pre_norm=True),
    ),
    ("no final norm", "vit_base_patch16_radio_v3", dict(depth=1, img_size=64)),
    ("distilled DeiT (two prefix tokens, two heads)", "deit_tiny_distilled_patch16_224", dict(depth=2)),
    ("q/k norm", None, dict(TINY, qk_norm=True)),
    ("dynamic image size (converted for its img_size)", None, dict(TINY, dynamic_img_size=True)),
    ("EVA-02: RoPE, GluMlp, q / v biases (Eva)", "eva02_tiny_patch14_224", dict(depth=2, img_size=56)),
    (
        "EVA-02: SwiGLU with a norm, attention-output norm, separate q / k / v",
        "eva02_base_patch14_448",
        dict(depth=1, img_size=56),
    ),
    (
        "EVA: no RoPE, layer scale absent",
        "eva_giant_patch14_224",
        dict(depth=1, img_size=56, embed_dim=88, num_heads=4),
    ),
    (
        "DINOv3: RoPE (half layout), registers, layer scale, no position embedding",
        "vit_small_patch16_dinov3",
        dict(depth=2, img_size=64),
    ),
    (
        "RoPE-ViT: a RoPE table per block and head (AttentionRope)",
        "vit_small_patch16_rope_mixed_224",
        dict(depth=2, img_size=64),
    ),
    (
        "RoPE-ViT: axial RoPE with a position embedding",
        "vit_small_patch16_rope_ape_224",
        dict(depth=2, img_size=64),
    ),
    ("Sapiens2: GluMlp, q / k norm, layer scale on the attention only", None, None),
    ("map pooling (SigLIP)", "vit_base_patch16_siglip_224", dict(depth=1, img_size=64)),
    (
        "map pooling over the image tokens, registers",
        "vit_so150m_patch16_reg4_map_256",
        dict(depth=1, img_size=64),
    ),
    (
        "map pooling with its own heads over every token (PE core)",
        "vit_pe_core_small_patch16_384",
        dict(depth=1, img_size=64),
    ),
    (
        "SwiGLU without biases, RmsNorm, no attention bias (AIMv2)",
        "aimv2_large_patch14_224",
        dict(depth=1, img_size=56),
    ),
    ("hybrid: ResNet stem, 1x1 projection", "vit_small_r26_s32_224", dict(depth=1, img_size=128)),
    (
        "hybrid: stem with batch norm (ResNet-26d features)",
        "vit_small_resnet26d_224",
        dict(depth=1, img_size=128),
    ),
    ("hybrid: convolutional stem, 8x8 patches of its map", "vit_tiny_r_s16_p8_224", dict(depth=1)),
    (
        "relative-position bias from an MLP (VisionTransformerRelPos)",
        "vit_relpos_small_patch16_224",
        dict(depth=2, img_size=64),
    ),
    (
        "relative-position bias shared by the blocks, [CLS]",
        "vit_srelpos_small_patch16_224",
        dict(depth=2, img_size=64, class_token=True, global_pool="token"),
    ),
    (
        "BEiT: relative-position bias table, q / v biases, layer scale",
        "beit_base_patch16_224",
        dict(depth=1, img_size=64),
    ),
    (
        "BEiT: only the bias shared by the blocks (its pre-training layout)",
        "beit_base_patch16_224",
        dict(depth=2, img_size=64, use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
    ),
    ("post-norm blocks (ResPostBlock)", "vit_base_patch16_rpn_224", dict(depth=1, img_size=64)),
    (
        "post-norm blocks with a relative-position bias",
        "vit_relpos_small_patch16_rpn_224",
        dict(depth=2, img_size=64),
    ),
    (
        "post-norm EVA blocks",
        "eva02_enormous_patch14_clip_224",
        dict(depth=1, img_size=56, embed_dim=64, num_heads=4),
    ),
    (
        "grouped-query attention, k / v heads per block (Sapiens2 5B)",
        None,
        dict(num_heads=4, num_kv_heads=[2, 4]),
    ),
    ("a stem whose map is the tokens (no patch projection)", "vit_base_mci_224", dict(depth=1)),
    (
        "image size no multiple of the patch (SigLIP so400m at 384 px)",
        "vit_so400m_patch14_siglip_384",
        dict(depth=1, img_size=60, embed_dim=64, num_heads=4),
    ),
    (
        "NaFlexVit: linear patch projection, position embedding resampled to its 384 px grid",
        "naflexvit_base_patch16_gap",
        dict(depth=1, embed_dim=64, num_heads=4),
    ),
    (
        "NaFlexVit: factorized position embedding",
        "naflexvit_base_patch16_parfac_gap",
        dict(depth=1, embed_dim=64, num_heads=4),
    ),
    (
        "NaFlexVit: map pooling with its own q / kv biases, a register",
        "naflexvit_so150m2_patch16_reg1_map",
        dict(depth=1, embed_dim=64, num_heads=4),
    ),
    (
        "NaFlexVit RADIO: [CLS] and registers, a 128 x 128 position embedding at 32 x 32",
        "naflexvit_base_patch16_radio_v3",
        dict(depth=1, embed_dim=64, num_heads=4),
    ),
]
REFUSED = [
    ("parallel blocks", "vit_base_patch16_xp_224", dict(depth=1), "ParallelScalingBlock"),
    ("windowed attention (SAM)", "samvit_base_patch16", dict(depth=1), "model is a VisionTransformerSAM"),
    ("differential attention", "vit_dlittle_patch16_reg1_gap_256", dict(depth=1), "DiffAttention"),
    ("SwiGLU with GELU", None, dict(TINY, mlp_layer=timm.layers.SwiGLU), "only SiLU with the gate first"),
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


def sapiens2_like(**kwargs):
    """An Eva as timm's Sapiens2 models build it (their factories take no depth), at a tiny size."""
    from timm.models.eva import Eva

    return Eva(
        **{
            **dict(
                img_size=32,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                num_classes=5,
                qkv_fused=False,
                swiglu_mlp=True,
                qk_norm=True,
                init_values=1e-5,
                attn_only_layer_scale=True,
                use_abs_pos_emb=False,
                use_rot_pos_emb=True,
                rope_type="dinov3",
                rope_rotate_half=True,
                attn_type="rope",
                global_pool="token",
                norm_layer=timm.layers.RmsNorm,
            ),
            **kwargs,
        }
    )


def timm_model(name, kwargs, dtype=torch.float64):
    try:
        if kwargs is None or "num_kv_heads" in kwargs:  # Sapiens2-like Evas (their factories take no depth)
            model = sapiens2_like(**(kwargs or {}))
        else:
            model = (
                VisionTransformer(**kwargs)
                if name is None
                else timm.create_model(name, pretrained=False, **kwargs)
            )
    except (TypeError, RuntimeError, AssertionError) as e:
        if int(timm.__version__.split(".")[0]) >= 1:  # the version the matrix is written for: a real failure
            raise
        pytest.skip(f"timm {timm.__version__} cannot build {name or 'it'} (a timm 1.0 model or option): {e}")
    return randomise(model.to(dtype)).eval()


def images(model, B=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    size = (
        model.patch_embed.img_size
        if hasattr(model, "patch_embed")
        else model.pretrained_cfg["input_size"][1:]
    )
    return torch.randn(B, 3, *size, generator=g, dtype=dtype)


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def same_features_and_intermediates(what, model, gtp, x):
    with torch.no_grad():
        assert rel_err(gtp.forward_features(x), model.forward_features(x)) <= 1e-12, what
        if not hasattr(model, "forward_intermediates"):
            return
        for kw in (
            dict(indices=1),
            dict(indices=[0], norm=True, output_fmt="NLC"),
            dict(return_prefix_tokens=True),
        ):
            try:
                want_final, want = model.forward_intermediates(x, **kw)
            except UnboundLocalError:  # timm 1.0.31's VisionTransformerRelPos without prefix tokens
                continue
            got_final, got = gtp.forward_intermediates(x, **kw)
            assert rel_err(got_final, want_final) <= 1e-12 and len(got) == len(want), (what, kw)
            for a, b in zip(got, want):
                pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
                for g, w in pairs:
                    assert g.shape == w.shape and (w.numel() == 0 or rel_err(g, w) <= 1e-12), (what, kw)


@pytest.mark.parametrize("what, name, kwargs", SUPPORTED, ids=[s[0] for s in SUPPORTED])
def test_no_reduction_is_the_timm_model(what, name, kwargs):
    """num_prop = 0, sparsity = 1: GTP's logits are the timm model's (float64: rel <= 1e-12), and
    so are forward_features and forward_intermediates (NCHW and NLC, normed or not, with the prefix
    tokens) wherever timm implements them; ToMe's logits at r = 0 where ToMe is defined."""
    model = timm_model(name, kwargs)
    x = images(model)
    gtp = from_timm(model, num_prop=0, sparsity=1.0)
    assert next(gtp.parameters()).dtype == torch.float64 and not gtp.training
    with torch.no_grad():
        want, got = model(x), gtp(x)
    assert got.shape == want.shape and rel_err(got, want) <= 1e-12, (what, rel_err(got, want))
    same_features_and_intermediates(what, model, gtp, x)
    positions = gtp.config.positions
    # ToMe: [CLS] only
    if (
        gtp.num_prefix_tokens <= int(gtp.config.prefix.class_token)
        and positions.rope is None
        and not positions.attn_bias
    ):
        with torch.no_grad():
            tome = tome_from_timm(model, r=0)(x)
        assert rel_err(tome, want) <= 1e-12, (what, "ToMe r=0", rel_err(tome, want))


FLOAT32 = [
    s
    for s in SUPPORTED
    if s[0]
    in (
        "DeiT-S",
        "layer scale (DeiT-III)",
        "EVA-02: RoPE, GluMlp, q / v biases (Eva)",
        "BEiT: relative-position bias table, q / v biases, layer scale",
    )
]


@pytest.mark.parametrize("what, name, kwargs", FLOAT32, ids=[s[0] for s in FLOAT32])
def test_float32_is_the_timm_model_too(what, name, kwargs):
    model = timm_model(name, kwargs, torch.float32)
    x = images(model, dtype=torch.float32)
    with torch.no_grad():
        want, got = model(x), from_timm(model, num_prop=0, sparsity=1.0)(x)
    assert rel_err(got, want) <= 1e-5, (what, rel_err(got, want))


PREFIXED = [SUPPORTED[i] for i in (13, 14, 10)] + [s for s in SUPPORTED if s[0].startswith("distilled")]
# one model of every family since the plain ViT: GTP on every backend agrees with the dense reference
FAMILIES = [
    s
    for s in SUPPORTED
    if s[0].split(":")[0] in ("EVA-02", "DINOv3", "Sapiens2")
    or s[0].startswith(
        (
            "RoPE-ViT: a RoPE table",
            "map pooling with",
            "hybrid: stem",
            "relative-position bias shared",
            "BEiT",
            "SwiGLU",
            "NaFlexVit: map",
        )
    )
]


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


@pytest.mark.parametrize("backend", ["sparse", "fast"])
@pytest.mark.parametrize("what, name, kwargs", FAMILIES, ids=[s[0] for s in FAMILIES])
def test_gtp_on_the_new_families_agrees_across_backends(what, name, kwargs, backend):
    """RoPE, relative-position biases, attention pooling, gated MLPs, hybrid stems: GTP with
    propagation on the sparse and fast backends selects the dense reference's tokens and gives its
    logits (the kept tokens' positions gathered the same way in each)."""
    model = timm_model(name, kwargs)
    x = images(model)
    settings = dict(num_prop=2, sparsity=0.6, token_scale=True, alpha=0.3, num_neighbours=2)
    with torch.no_grad():
        want = from_timm(model, **settings).forward_trace(x, record=True)
        got = from_timm(model, backend=backend, **settings).forward_trace(x, record=True)
    assert [layer.prop.tolist() for layer in got.layers] == [layer.prop.tolist() for layer in want.layers], (
        what
    )
    assert torch.allclose(got.logits, want.logits, rtol=1e-9, atol=1e-12), (what, backend)


def test_a_kept_token_keeps_its_rope_rows_and_bias_entries():
    """The rows of RoPE and of the relative-position bias follow the kept tokens' first positions."""
    rope = from_timm(timm_model("vit_small_patch16_rope_mixed_224", dict(depth=2, img_size=64)))
    positions = torch.tensor([[0, 5, 7], [3, 4, 15]])
    rows = rope.rope_rows_for(1, positions)  # (B, H, 3, 2 d)
    assert torch.equal(rows[1, :, 2], rope.rope_table[1, :, 15]) and torch.equal(
        rows[0, :, 1], rope.rope_table[1, :, 5]
    )
    beit = from_timm(timm_model("beit_base_patch16_224", dict(depth=1, img_size=64)))
    bias = beit.bias_for(0, positions)  # (B, H, 1 + 3, 1 + 3): [CLS] first
    table = beit.attn_bias_table[0]
    assert torch.equal(bias[1, :, 0, 3], table[:, 0, 16]) and torch.equal(bias[0, :, 2, 1], table[:, 6, 1])


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_small_patch16_rope_mixed_224", dict(depth=3, img_size=64)),
        ("vit_small_patch16_dinov3", dict(depth=3, img_size=64)),
        ("beit_base_patch16_224", dict(depth=3, img_size=64)),
    ],
)
def test_pruning_turns_and_biases_each_token_by_its_own_patch(name, kwargs):
    """GTP's pruning (propagation='none') on a RoPE / relative-position-bias model replayed block by
    block with the trace's selections, each token's patch tracked here: the same logits."""
    timm_net = timm_model(name, kwargs)
    model, x = from_timm(timm_net, num_prop=4, propagation="none", sparsity=0.6), images(timm_net)
    replayed, logits = replay_pruning(model, x)
    assert torch.allclose(replayed, logits, rtol=1e-12, atol=1e-12), name


def test_positions_without_a_patch_are_refused():
    """propagation='mean' appends a token of no patch: refused with RoPE or a relative-position
    bias; ToMe (merged tokens of several patches) refuses both."""
    model = timm_model("vit_small_patch16_rope_224", dict(depth=2, img_size=64))
    with pytest.raises(ValueError, match="propagation='mean' with rope or attn_bias"):
        from_timm(model, num_prop=2, propagation="mean")
    with pytest.raises(ValueError, match="ToMe with rotary position embeddings"):
        tome_from_timm(model, r=2)
    with pytest.raises(ValueError, match="ToMe with rotary position embeddings"):
        tome_from_timm(timm_model("beit_base_patch16_224", dict(depth=1, img_size=64)))


def test_attention_pooling_weighs_tokens_by_their_size():
    """map pooling with token sizes: a token of size s pools as s copies of it would (proportional
    attention), and sizes of 1 are timm's pooling."""
    from gtp_ref.layers import AttentionPool

    pool = AttentionPool(
        ViTConfig.of(embed_dim=8, num_heads=2, mlp_ratio=2.0, depth=1, norm_eps=1e-5)
    ).double()
    with torch.no_grad():
        for p in pool.parameters():
            p.copy_(
                torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(p.numel()))
            )
        x = torch.randn(2, 5, 8, dtype=torch.float64)
        sizes = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0]] * 2, dtype=torch.float64)
        copies = torch.cat(
            [x[:, :1], x[:, 1:2].expand(-1, 3, -1), x[:, 2:3], x[:, 3:4].expand(-1, 2, -1), x[:, 4:]], 1
        )
        assert torch.allclose(pool(x, sizes), pool(copies), rtol=1e-12, atol=1e-12)
        assert torch.equal(pool(x, torch.ones(2, 5, dtype=torch.float64)), pool(x))


def test_the_converted_model_keeps_device_dtype_and_mode():
    model = timm_model("deit_tiny_patch16_224", dict(depth=1), torch.float32).train()
    gtp = from_timm(model, num_prop=2)
    assert gtp.training and next(gtp.parameters()).dtype == torch.float32
    assert gtp.grid == (14, 14) and gtp.num_prop == [2]


@pytest.mark.parametrize("what, name, kwargs, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_cannot_be_represented_is_refused_by_name(what, name, kwargs, message):
    try:
        model = (
            VisionTransformer(**kwargs)
            if name is None
            else timm.create_model(name, pretrained=False, **kwargs)
        )
    except (TypeError, RuntimeError, AssertionError) as e:  # an older timm without the option
        pytest.skip(f"this timm ({timm.__version__}) cannot build it: {e}")
    with pytest.raises(ValueError, match=message):
        from_timm(model)
    with pytest.raises(ValueError, match=message):
        tome_from_timm(model)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_small_patch14_reg4_dinov2", dict(depth=1, img_size=56)),
        ("deit_tiny_distilled_patch16_224", dict(depth=1)),
    ],
)
def test_tome_refuses_prefix_tokens_beyond_cls(name, kwargs):
    with pytest.raises(ValueError, match="prefix tokens beyond \\[CLS\\]"):
        tome_from_timm(timm_model(name, kwargs), r=2)


def test_the_registry_survey_names_every_refusal():
    """python -m gtp_ref.apps.support on a few models of each kind: converted or refused with the reason."""
    from gtp_ref.apps import support

    names = [
        "deit_tiny_patch16_224",
        "eva02_tiny_patch14_224",
        "vit_small_r26_s32_224",
        "beit_base_patch16_224",
        "samvit_base_patch16",
        "vit_base_patch16_xp_224",
    ]
    rows = {r["name"]: r for r in support.survey(names=names)}
    assert set(rows) == set(names)
    assert [n for n in names if rows[n]["converted"]] == names[:4]
    for n in names[4:]:
        assert rows[n]["reason"], n
    table = support.table(list(rows.values()))
    assert "converts 4 of the 6 models" in table and "refused, by reason" in table


def test_a_strict_key_match_is_no_proof():
    """A post-norm model's state_dict loads into a pre-norm GTPViT (same keys), which then computes
    something else; from_timm looks at the modules and builds the post-norm model timm's is."""
    from gtp_ref import GTPViT
    from gtp_ref.vit import PostNormBlock

    model = timm_model("vit_base_patch16_rpn_224", dict(depth=1, img_size=64))
    pre_norm = GTPViT(
        ViTConfig.of(img_size=64, depth=1, class_token=False, global_pool="avg", qkv_bias=False)
    ).double()
    pre_norm.load_state_dict(model.state_dict())  # the keys match (strict) ...
    x = images(model)
    with torch.no_grad():
        assert rel_err(pre_norm(x), model(x)) > 1e-3  # ... the architecture does not
        converted = from_timm(model)
        assert isinstance(converted.blocks[0], PostNormBlock) and rel_err(converted(x), model(x)) <= 1e-12


@pytest.mark.parametrize(
    "name, kwargs, timm_countable",
    [
        ("eva02_tiny_patch14_224", dict(depth=1, img_size=56), True),
        ("vit_small_r26_s32_224", dict(depth=1, img_size=128), True),
        ("sapiens2", dict(num_heads=4, num_kv_heads=2), True),
        # timm's attention pool feeds a view of its latent made under no_grad to a Linear, which the
        # flop counter's module tracker cannot follow: only gtp_ref's count
        ("vit_pe_core_small_patch16_384", dict(depth=1, img_size=64), False),
    ],
)
def test_the_new_parts_count_as_backbone(name, kwargs, timm_countable):
    """q / v biases, separate and grouped projections, the attention pool, a hybrid stem: all the
    backbone's MACs (none counted as GTP's overhead), as many as the timm model runs."""
    model = timm_model(name, kwargs)
    x = images(model, B=1)
    gtp = measure_macs(from_timm(model, num_prop=0), x)
    assert gtp["overhead"] == 0 and gtp["backbone"] == gtp["total"] > 0, gtp
    if timm_countable:
        assert gtp["total"] == measure_macs(model, x)["total"]


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
    """``python -m gtp_ref.apps.bench throughput --timm NAME --checkpoint FILE`` (a smoke run, no timing
    asserted)."""
    import json
    import subprocess
    import sys

    checkpoint = tmp_path / "deit_t.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), checkpoint)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gtp_ref.apps.bench",
            "throughput",
            "--timm",
            "deit_tiny_patch16_224",
            "--checkpoint",
            str(checkpoint),
            "--num-prop",
            "16",
            "--batches",
            "1",
            "--repeats",
            "1",
            "--methods",
            "baseline_fused",
            "gtp_fast",
            "tome",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["num_prop"]) for x in rows] == [
        ("baseline_fused", 0),
        ("gtp_fast", 16),
        ("tome", 16),
    ]
    assert all(x["speedup"] > 0 for x in rows) and rows[1]["expected_speedup"] > 1.9


def test_dropout_in_training_mode_is_refused_by_name():
    """gtp_ref's models apply no dropout: a timm model in training mode with dropout or drop path
    is refused (the converted model would be silently deterministic); in eval mode it converts,
    and putting the converted model into training mode warns."""
    import warnings

    model = timm.create_model(
        "deit_tiny_patch16_224", pretrained=False, depth=2, drop_rate=0.1, drop_path_rate=0.2
    )
    with pytest.raises(
        ValueError,
        match=r"training mode with dropout or drop path \(blocks.1.drop_path1 \(DropPath "
        r"p=0.2\).*convert it in eval mode",
    ):
        from_timm(model)
    with pytest.raises(ValueError, match="training mode with dropout"):
        tome_from_timm(model)
    gtp = from_timm(model.eval())
    assert not gtp.training and "head_drop (Dropout p=0.1)" in gtp.dropout_not_applied
    with pytest.warns(UserWarning, match="applies no dropout or drop path.*head_drop"):
        gtp.train()
    # train mode, no dropout
    plain = from_timm(timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1))
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


def test_the_benchmark_says_where_tome_is_not_defined():
    """``bench throughput --timm`` on a RoPE model: ToMe asked for is refused with the reason."""
    from gtp_ref.apps.bench import __main__ as bench
    from tests.helpers import command

    r = command(
        bench.main,
        "throughput",
        "--timm",
        "vit_small_patch16_rope_224",
        "--methods",
        "tome",
        "--batches",
        "1",
        "--repeats",
        "1",
    )
    assert r.returncode == 2 and "ToMe is not defined for this model" in r.stderr and "RoPE" in r.stderr, (
        r.stderr
    )


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "beit_base_patch16_224"])
def test_vis_draws_gtp_on_a_rope_and_a_relative_bias_model(tmp_path, name):
    """``python -m gtp_ref.apps.vis IMAGE --timm NAME`` on the new families: the figure is written."""
    from PIL import Image

    from gtp_ref.apps import vis
    from tests.helpers import command

    rgb = np.random.default_rng(0).integers(0, 256, (90, 100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "image.png")
    r = command(
        vis.main, tmp_path / "image.png", "--timm", name, "--num-prop", "4", "--out", tmp_path / "gtp.png"
    )
    assert r.returncode == 0 and (tmp_path / "gtp.png").stat().st_size > 10_000, r.stderr


# One model of each family that from_timm converts beyond the plain ViT: what the commands must run
# (NaFlexVit, 576 tokens of a base model, takes 25 s a command: its conversion is in SUPPORTED)
FAMILIES = [
    ("EVA-02: RoPE", "eva02_tiny_patch14_224"),
    ("BEiT: relative-position bias", "beit_base_patch16_224"),
    ("DINOv3: RoPE, registers", "vit_small_patch16_dinov3"),
    ("RelPos: a bias from an MLP", "vit_relpos_small_patch16_224"),
    ("SigLIP: attention pooling", "vit_base_patch32_siglip_256"),
    ("hybrid: ResNet stem", "vit_small_r26_s32_224"),
]
BENCHED = ("eva02_tiny_patch14_224", "beit_base_patch16_224", "vit_base_patch32_siglip_256")


@pytest.mark.parametrize("name", [n for _, n in FAMILIES], ids=[f for f, _ in FAMILIES])
def test_eval_runs_gtp_on_every_family(tmp_path, name):
    """``python -m gtp_ref.apps.eval DIR --timm NAME`` with every method: GTP and pruning are built by
    converting the model (its RoPE / bias tables, renamed layer scales), never by loading timm's raw
    state_dict into a fresh backbone; ToMe is left out with a warning where it is not defined."""
    from gtp_ref.apps import eval as eval_command
    from tests.helpers import command
    from tests.imagefiles import image_folder

    root = image_folder(tmp_path / "val", per_class=1, size=24)
    out = tmp_path / "result.json"
    r = command(
        eval_command.main,
        root,
        "--timm",
        name,
        "--num-classes",
        "3",
        "--num-prop",
        "4",
        "--batch-size",
        "3",
        "--json-out",
        out,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert {"baseline", "gtp", "prune"} <= set(rows) and all(row["images"] == 3 for row in rows.values()), (
        rows
    )
    tome_defined = "tome" in rows
    assert tome_defined == ("tome left out" not in r.stderr), r.stderr


@pytest.mark.parametrize("name", BENCHED)
def test_the_throughput_benchmark_runs_on_the_new_families(name):
    """``python -m gtp_ref.apps.bench throughput --timm NAME`` on a RoPE, a bias and an attention-pooled
    model (a smoke run, no timing asserted): the unreduced timm model and fast GTP made from it by
    ``from_timm``."""
    from gtp_ref.apps.bench import __main__ as bench
    from tests.helpers import command

    r = command(
        bench.main,
        "throughput",
        "--timm",
        name,
        "--num-prop",
        "4",
        "--batches",
        "1",
        "--repeats",
        "1",
        "--methods",
        "baseline_fused",
        "gtp_fast",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["num_prop"]) for x in rows] == [("baseline_fused", 0), ("gtp_fast", 4)]
    assert all(x["img_per_s"] > 0 for x in rows)
