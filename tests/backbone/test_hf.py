"""GTP and ToMe on Hugging Face models: the support matrix of ``from_hf`` / ``tome_from_hf``, each
row an HF model built from a tiny config with every parameter random (norms, position
embeddings, layer scales, biases, pool heads), checked against the HF model itself; the HF and
timm conversions of one architecture agree; the refusals.  Skipped, with the reason, where
transformers cannot be imported."""

import math

import pytest
import torch

from gtp_ref.hf_models import from_hf, hf_backbone, hf_result, tome_from_hf
from tests.helpers import HF_TINY, replay_pruning

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'gtp-ref[hf]')")

TINY = dict(HF_TINY, num_labels=5)

# (what it covers, model type, class (None: AutoModel; "clip" / "siglip": the classification model of the
# composite config), config changes)
SUPPORTED = [
    ("ViT: the tanh pooler", "vit", None, {}),
    ("ViT classification", "vit", "ViTForImageClassification", {}),
    ("DeiT: the distillation token a second prefix token", "deit", None, {}),
    ("DeiT classification ([CLS] only)", "deit", "DeiTForImageClassification", {}),
    ("DeiT with teacher: the mean of two heads", "deit", "DeiTForImageClassificationWithTeacher", {}),
    ("BEiT: mean pooling, q / v biases, layer scale", "beit", None, {}),
    (
        "BEiT: a relative-position bias per block, absolute positions",
        "beit",
        None,
        dict(use_relative_position_bias=True, use_absolute_position_embeddings=True),
    ),
    (
        "BEiT: the shared relative-position bias, [CLS] pooling",
        "beit",
        None,
        dict(use_shared_relative_position_bias=True, use_mean_pooling=False),
    ),
    ("BEiT classification", "beit", "BeitForImageClassification", {}),
    (
        "Data2Vec-Vision classification with a relative-position bias",
        "data2vec-vision",
        "Data2VecVisionForImageClassification",
        dict(use_relative_position_bias=True),
    ),
    ("DINOv2: the normed [CLS]", "dinov2", None, {}),
    ("DINOv2: SwiGLU", "dinov2", None, dict(use_swiglu_ffn=True)),
    ("DINOv2 with registers (no position embedding on them)", "dinov2_with_registers", None, {}),
    (
        "DINOv3: RoPE, registers, a gated MLP",
        "dinov3_vit",
        None,
        dict(num_register_tokens=2, use_gated_mlp=True, hidden_act="silu"),
    ),
    ("CLIP vision: pre-norm, QuickGELU, the post-layernorm [CLS]", "clip_vision_model", None, {}),
    (
        "CLIP vision with projection: the image embedding",
        "clip_vision_model",
        "CLIPVisionModelWithProjection",
        dict(projection_dim=12),
    ),
    ("CLIP classification: the mean of the patch tokens", "clip_vision_model", "clip", {}),
    ("Chinese-CLIP vision", "chinese_clip_vision_model", None, {}),
    ("MetaCLIP 2 vision", "metaclip_2", "MetaClip2VisionModel", {}),
    ("SigLIP vision: attention pooling", "siglip_vision_model", None, {}),
    ("SigLIP classification", "siglip_vision_model", "siglip", {}),
    ("ViT-MSN: no pooled output (the mean of the tokens)", "vit_msn", None, {}),
    ("ViT-MSN classification", "vit_msn", "ViTMSNForImageClassification", {}),
    ("I-JEPA: no [CLS]", "ijepa", None, {}),
    ("I-JEPA classification", "ijepa", "IJepaForImageClassification", {}),
    ("ViT-MAE, unmasked", "vit_mae", None, dict(mask_ratio=0.0)),
    ("Idefics3 vision: bucketed positions on the full grid", "idefics3_vision", None, {}),
    ("SmolVLM vision", "smolvlm_vision", None, {}),
    ("InternVL vision: q / k / v without biases, layer scale", "internvl_vision", None, {}),
]
FAMILIES = sorted({row[1] for row in SUPPORTED})


def randomise(model):
    """Every parameter random, with the scale of its kind, so that no layout slip can hide."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim >= 2:
                p.copy_(z / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * z)
            else:
                p.copy_(0.5 * z)
    return model


def hf_model(model_type, cls=None, changes=None, dtype=torch.float64):
    """An HF model of ``TINY`` (and ``changes``), every parameter random, eval mode."""
    if model_type == "metaclip_2":
        config = transformers.MetaClip2VisionConfig(**{k: v for k, v in TINY.items() if k != "num_labels"})
    else:
        config = transformers.AutoConfig.for_model(model_type, **TINY, **(changes or {}))
    if cls in ("clip", "siglip"):  # the classification models of the composite configs
        composite = getattr(transformers, "CLIPConfig" if cls == "clip" else "SiglipConfig")
        model = getattr(
            transformers, "CLIPForImageClassification" if cls == "clip" else "SiglipForImageClassification"
        )(composite(vision_config=config.to_dict(), num_labels=5))
    elif cls is not None:
        model = getattr(transformers, cls)(config)
    else:
        model = transformers.AutoModel.from_config(config)
    return randomise(model.to(dtype)).eval()


def images(B=2, dtype=torch.float64):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("what, model_type, cls, changes", SUPPORTED, ids=[s[0] for s in SUPPORTED])
def test_no_reduction_is_the_hf_model(what, model_type, cls, changes):
    """num_prop = 0, sparsity = 1: the converted model returns what the HF model does (float64:
    rel <= 1e-10); ToMe at r = 0 too, where ToMe is defined."""
    model = hf_model(model_type, cls, changes)
    x = images()
    gtp = from_hf(model, num_prop=0, sparsity=1.0, num_neighbours=2)
    assert next(gtp.parameters()).dtype == torch.float64 and not gtp.training
    with torch.no_grad():
        want = hf_result(model, x)
    with torch.no_grad():
        got = gtp(x)
    assert got.shape == want.shape and rel_err(got, want) <= 1e-10, (what, rel_err(got, want))
    positions = gtp.config.positions
    if (
        gtp.num_prefix_tokens <= int(gtp.config.prefix.class_token)
        and positions.rope is None
        and not positions.attn_bias
    ):
        with torch.no_grad():
            tome = tome_from_hf(model, r=0)(x)
        assert rel_err(tome, want) <= 1e-10, (what, "ToMe r=0", rel_err(tome, want))


FLOAT32 = [
    s for s in SUPPORTED if s[0].startswith(("ViT: the", "DINOv3", "SigLIP vision", "BEiT: a relative"))
]


@pytest.mark.parametrize("what, model_type, cls, changes", FLOAT32, ids=[s[0] for s in FLOAT32])
def test_float32_is_the_hf_model_too(what, model_type, cls, changes):
    model = hf_model(model_type, cls, changes, torch.float32)
    x = images(dtype=torch.float32)
    gtp = from_hf(model, num_prop=0, num_neighbours=2)
    with torch.no_grad():
        got, want = gtp(x), hf_result(model, x)
    assert rel_err(got, want) <= 1e-5, (what, rel_err(got, want))


BACKENDS_ON = [
    s
    for s in SUPPORTED
    if s[0].startswith(
        ("DeiT with", "BEiT: a relative", "DINOv2 with", "DINOv3", "SigLIP vision", "CLIP vision with")
    )
]


@pytest.mark.parametrize("backend", ["sparse", "fast"])
@pytest.mark.parametrize("what, model_type, cls, changes", BACKENDS_ON, ids=[s[0] for s in BACKENDS_ON])
def test_gtp_runs_on_every_backend(what, model_type, cls, changes, backend):
    """GTP at P = 2 with the paper's settings on sparse and fast: the dense reference's selections,
    its output (<= 1e-9), finite, and P fewer tokens after every block."""
    model, x = hf_model(model_type, cls, changes), images()
    settings = dict(num_prop=2, num_neighbours=2, sparsity=0.6, alpha=0.1, token_scale=True)
    with torch.no_grad():
        want = from_hf(model, **settings).forward_trace(x)
        got = from_hf(model, backend=backend, **settings).forward_trace(x)
    for a, b in zip(got.layers, want.layers):
        assert a.prop is None or torch.equal(a.prop, b.prop), what
    assert torch.isfinite(got.logits).all() and rel_err(got.logits, want.logits) <= 1e-9, what
    tokens = [layer.tokens for layer in got.layers] + [got.final_tokens]
    assert all(a - b == 2 for a, b in zip(tokens, tokens[1:])), tokens


@pytest.mark.parametrize(
    "what, model_type, cls, changes",
    [s for s in SUPPORTED if s[0].startswith(("DINOv3", "BEiT: a relative"))],
    ids=["RoPE (DINOv3)", "relative-position bias (BEiT)"],
)
def test_pruning_turns_and_biases_each_token_by_its_own_patch(what, model_type, cls, changes):
    """Pruning replayed block by block with the trace's selections, each token's patch tracked by
    the test: the model's logits."""
    model = from_hf(hf_model(model_type, cls, changes), num_prop=3, propagation="none", sparsity=0.6)
    replayed, logits = replay_pruning(model, images())
    assert torch.allclose(replayed, logits, rtol=1e-12, atol=1e-12), what


TIMM_TWINS = [  # (the HF model, the timm model of the same architecture: its VisionTransformer keywords)
    (
        "DeiT-S-like: ViT classification",
        "vit",
        "ViTForImageClassification",
        dict(layer_norm_eps=1e-6),
        dict(num_classes=5, global_pool="token"),
    ),
    (
        "DINOv2-S-like: layer scale, the normed [CLS]",
        "dinov2",
        None,
        {},
        dict(num_classes=0, global_pool="token", init_values=1.0),
    ),
    (
        "SigLIP-B-like: no [CLS], attention pooling",
        "siglip_vision_model",
        None,
        {},
        dict(num_classes=0, class_token=False, global_pool="map", act_layer="gelu_tanh", mlp_ratio=2.0),
    ),
]


@pytest.mark.parametrize(
    "what, model_type, cls, changes, timm_kwargs", TIMM_TWINS, ids=[t[0] for t in TIMM_TWINS]
)
def test_the_hf_and_timm_conversions_of_one_architecture_agree(what, model_type, cls, changes, timm_kwargs):
    """The HF model's weights, laid out as the backbone's (= timm's) state_dict, load into timm's
    VisionTransformer of the same architecture; from_timm and from_hf then build the same config and
    the same model (float64: the outputs equal to 1e-12)."""
    timm = pytest.importorskip("timm")
    model = hf_model(model_type, cls, changes)
    backbone = hf_backbone(model)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, **timm_kwargs)
    if "mlp_ratio" not in kwargs:
        kwargs["mlp_ratio"] = backbone.config.mlp.mlp_ratio
    twin = timm.models.vision_transformer.VisionTransformer(**kwargs).double().eval()
    twin.load_state_dict(backbone.state, strict=True)
    from gtp_ref import from_timm

    via_hf, via_timm = from_hf(model, num_neighbours=2), from_timm(twin, num_neighbours=2)
    assert {**via_hf.config.flat(), "name": ""} == {**via_timm.config.flat(), "name": ""}, what
    with torch.no_grad():
        assert torch.allclose(via_hf(images()), via_timm(images()), rtol=1e-12, atol=1e-12), what


REFUSED = [
    (
        "DINOv2's classifier: [CLS] beside the patch mean",
        "dinov2",
        "Dinov2ForImageClassification",
        {},
        "its classifier reads \\[CLS\\] and the mean of the patch tokens side by side",
    ),
    (
        "windowed attention (Swin)",
        "swin",
        None,
        dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=2),
        "model is a SwinModel: windowed attention",
    ),
    (
        "a norm over every head's q and k (InternVL)",
        "internvl_vision",
        None,
        dict(use_qk_norm=True),
        "normalises q and k over all heads together",
    ),
    (
        "a tower from_hf does not read (MLCD: another RoPE layout)",
        "mlcd_vision_model",
        None,
        {},
        "the model's vision tower is not one from_hf reads and tests; it is a MLCDVisionModel",
    ),
    (
        "an activation the backbone lacks",
        "vit",
        None,
        dict(hidden_act="relu"),
        "activation 'relu' is not one of",
    ),
]


@pytest.mark.parametrize("what, model_type, cls, changes, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_the_backbone_cannot_represent_is_refused_by_name(what, model_type, cls, changes, message):
    if model_type == "swin":
        config = transformers.SwinConfig(image_size=32, patch_size=4, **changes)
        model = transformers.SwinModel(config)
    else:
        model = hf_model(model_type, cls, changes)
    with pytest.raises(ValueError, match=message):
        from_hf(model)


@pytest.mark.parametrize("cls", ["TimmWrapperModel", "TimmWrapperForImageClassification"])
def test_a_timm_model_inside_transformers_converts_as_from_timm(cls):
    """transformers' timm wrapper: the timm model inside is read as from_timm reads it, and the
    converted model returns the wrapper's result (its pooled output, its logits)."""
    pytest.importorskip("timm", reason="the timm wrapper needs timm")
    config = transformers.TimmWrapperConfig(
        architecture="deit_tiny_patch16_224",
        model_args=dict(depth=2, img_size=32, patch_size=8, embed_dim=32, num_heads=2),
        num_labels=5,
    )
    model = randomise(getattr(transformers, cls)(config).to(torch.float64)).eval()
    x = images()
    with torch.no_grad():
        want = hf_result(model, x)
        got = from_hf(model, num_prop=0, sparsity=1.0)(x)
        tome = tome_from_hf(model, r=0)(x)
        reduced = from_hf(model, num_prop=2, num_neighbours=2).forward_trace(x)
    assert got.shape == want.shape == (2, 5 if "Classification" in cls else 32)
    assert rel_err(got, want) <= 1e-10 and rel_err(tome, want) <= 1e-10
    assert reduced.tokens_per_layer[-1] == 17 - 4 and torch.isfinite(reduced.logits).all()


@pytest.mark.parametrize(
    "model_type, message",
    [
        ("hiera", "HieraModel: pooled, windowed attention"),
        ("vitdet", "VitDetModel: windowed attention"),
        ("sam_vision_model", "SamVisionModel: windowed attention"),
        ("vivit", "VivitModel: video tubelets"),
        ("pixtral", "PixtralVisionModel: variable-resolution packing"),
        ("levit", "LevitModel: a convolutional stage between blocks"),
        ("mobilevit", "MobileViTModel: convolutional stages"),
        ("yolos", "not one from_hf reads and tests; it is a YolosModel"),
    ],
)
def test_each_kind_of_architecture_it_cannot_represent_is_refused_with_why(model_type, message):
    """The architectures refused by kind, each from its default config on the meta device (no
    weights): the message names the class and what the backbone lacks."""
    config = transformers.AutoConfig.for_model(model_type)
    with torch.device("meta"):
        named = getattr(transformers, type(config).__name__.replace("Config", "Model"))
        model = named(config)
    with pytest.raises(ValueError, match=message):
        hf_backbone(model)


def test_a_model_of_images_and_text_is_refused_with_what_to_convert():
    """CLIPModel's result is neither its vision model's pooled output nor one tensor: refused,
    naming what converts instead."""
    config = transformers.CLIPConfig(
        vision_config=HF_TINY,
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    )
    with pytest.raises(ValueError, match=r"CLIPModel, a model of images and text.*model.vision_model"):
        from_hf(transformers.CLIPModel(config))


def test_a_model_without_a_vision_tower_is_refused():
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    with pytest.raises(ValueError, match="not one from_hf reads and tests; it is a CLIPTextModel"):
        from_hf(text)


def test_the_converted_model_keeps_device_dtype_and_mode():
    model = hf_model("vit", "ViTForImageClassification", dtype=torch.float32).train()
    gtp = from_hf(model, num_prop=2, num_neighbours=2)
    assert gtp.training and next(gtp.parameters()).dtype == torch.float32 and gtp.num_prop == [2, 2]


@pytest.mark.parametrize(
    "model_type, changes, named",
    [
        ("vit", dict(hidden_dropout_prob=0.1), r"\(Dropout p=0.1\)"),
        ("vit", dict(attention_probs_dropout_prob=0.1), r"attention \(attention dropout p=0.1\)"),
        ("clip_vision_model", dict(attention_dropout=0.1), r"attn \(attention dropout p=0.1\)"),
        ("dinov2", dict(drop_path_rate=0.2), r"\(Dinov2DropPath p=0.2\)"),
    ],
)
def test_dropout_in_training_mode_is_refused_by_name(model_type, changes, named):
    """gtp_ref's models apply no dropout: an HF model in training mode that drops activations,
    attention weights or paths is refused, naming what; in eval mode it converts, and the
    converted model warns when put into training mode."""
    model = hf_model(model_type, changes=changes).train()
    with pytest.raises(ValueError, match=f"training mode with dropout or drop path.*{named}.*model.eval()"):
        from_hf(model)
    gtp = from_hf(model.eval(), num_neighbours=2)
    assert not gtp.training and gtp.dropout_not_applied
    with pytest.warns(UserWarning, match="applies no dropout or drop path"):
        gtp.train()
