"""Measured MACs (torch.utils.flop_counter) equal the complexity model exactly."""

import torch
from hypothesis import given

from complexity.backbone import backbone_macs
from complexity.exact import g_gtp_exact, g_tome_exact
from gtp_ref import GTPViT
from gtp_ref.config import ViTConfig
from gtp_ref.conformance.seeded import flat_model
from gtp_ref.cost import measure_macs
from gtp_ref.tome import ToMeViT
from tests.helpers import configs, images_for, tome_configs


@given(configs(square=True))
def test_gtp_backbone_and_overhead_macs_are_exact(cfg):
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_max"
    model = flat_model(cfg).eval()
    x = images_for(cfg, 2, dtype=torch.float32)
    with torch.no_grad():
        trace = model.forward_trace(x)
    tokens = [t.tokens for t in trace.layers] + [trace.final_tokens]
    removed = [a - b for a, b in zip(tokens, tokens[1:])]
    measured = measure_macs(model, x)
    assert measured["backbone"] == backbone_macs(model.config, removed)["total"], cfg
    cos = tokens[:-1]  # N_l: the cos-sim scores multiply n_l rows by N_l columns
    want = g_gtp_exact(
        model.num_image_tokens,
        cfg["num_prop"],
        cfg["embed_dim"],
        semantic_graph=cfg["graph"] != "spatial" and cfg["num_neighbours"] > 0,
        token_scale=cfg["token_scale"],
        propagation=cfg["propagation"],
        cos_sim_tokens=cos if cfg["selection"].startswith("cos_sim") else None,
    )
    assert measured["overhead"] == want, (cfg, measured)


@given(tome_configs(square=True))
def test_tome_backbone_and_overhead_macs_are_exact(cfg):
    model = flat_model(cfg, ToMeViT).eval()
    x = images_for(cfg, 2, dtype=torch.float32)
    with torch.no_grad():
        trace = model.forward_trace(x)
    measured = measure_macs(model, x)
    assert measured["backbone"] == backbone_macs(model.config, trace.merged)["total"]
    N = model.num_image_tokens + int(cfg["class_token"])
    assert measured["overhead"] == g_tome_exact(
        N, cfg["r"], cfg["embed_dim"], cfg["num_heads"], class_token=cfg["class_token"]
    )


def test_deit_small_paper_settings():
    """DeiT-S, P = r = 8, paper settings: the exact counts beside Eqs. 2-3."""
    from complexity import eq2_printed, g_gtp

    x = torch.randn(1, 3, 224, 224)
    gtp = GTPViT(
        ViTConfig.of(embed_dim=384, num_heads=6), num_prop=8, sparsity=0.6, token_scale=True, num_neighbours=4
    )
    tome = ToMeViT(ViTConfig.of(embed_dim=384, num_heads=6), r=8)
    m_gtp, m_tome = measure_macs(gtp.eval(), x), measure_macs(tome.eval(), x)
    assert m_gtp["overhead"] == g_gtp_exact(196, [8] * 12, 384, token_scale=True)
    assert m_tome["overhead"] == g_tome_exact(197, [8] * 12, 384, 6)
    assert m_gtp["backbone"] == m_tome["backbone"]
    # The paper's Eq. 3 (20.26 MMACs) vs executed; Eq. 2 vs executed: H times smaller.
    assert m_gtp["overhead"] < g_gtp(197, 12, 8, 384, 6)
    assert m_tome["overhead"] * 5 < eq2_printed(197, 12, 8, 384)


def test_macs_per_image_need_an_image():
    import pytest

    model = GTPViT(
        ViTConfig.of(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2),
        num_prop=1,
        num_neighbours=2,
    )
    with pytest.raises(
        ValueError, match=r"images has shape \[0, 3, 16, 16\]: MACs per image need at least one"
    ):
        measure_macs(model, torch.zeros(0, 3, 16, 16))


def test_a_product_the_counter_cannot_see_raises():
    import pytest

    class Projection(torch.nn.Module):  # torch.mv: a product without a flop formula
        def forward(self, x):
            return torch.mv(x.flatten(1), torch.ones(x[0].numel()))[:, None]

    with pytest.raises(ValueError, match="aten.mv, a product the flop counter has no formula for"):
        measure_macs(Projection(), torch.zeros(2, 3, 4, 4))


def test_the_fused_attention_is_counted_on_the_cpu():
    """scaled_dot_product_attention on the CPU: the backbone MACs of the fused and the explicit
    plain ViT are the same, and the complexity model's."""
    from gtp_ref.vit import ViT

    g = ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    x = torch.zeros(1, 3, 32, 32)
    fused = measure_macs(ViT(g, fused_attn=True).eval(), x)
    assert fused["total"] == fused["backbone"] == backbone_macs(g)["total"]
