"""Backbone MAC model (supplement Tables 1-2) and the ToMe / GTP schedules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from complexity.backbone import backbone_macs
from gtp_ref.config import PRESETS, ViTConfig
from gtp_ref.schedule import prop_schedule, tome_schedule


def plain_vit_macs(g, tokens_attn, tokens_mlp):
    """Independent count: per block 4 N C^2 + 2 N^2 C (attention) and 2 N' C hidden (MLP)."""
    C = g.embed_dim
    total = g.num_image_tokens * C * g.patches.in_chans * g.patches.patch_size**2 + C * g.head.num_classes
    for n, n2 in zip(tokens_attn, tokens_mlp):
        total += 4 * n * C * C + 2 * n * n * C + 2 * n2 * C * g.hidden
    return total


@st.composite
def geometry_and_schedule(draw):
    patch = draw(st.sampled_from([2, 4, 8, 16]))
    class_token = draw(st.booleans())
    g = ViTConfig.of(
        img_size=patch * draw(st.integers(1, 8)),
        patch_size=patch,
        embed_dim=draw(st.integers(1, 64)),
        depth=draw(st.integers(1, 6)),
        num_heads=1,
        num_classes=draw(st.integers(1, 10)),
        class_token=class_token,
        global_pool="token" if class_token else "avg",
    )
    budget = g.num_image_tokens - 1
    P = []
    for _ in range(g.depth):
        P.append(draw(st.integers(0, budget)))
        budget -= P[-1]
    return g, P


@given(geometry_and_schedule())
def test_backbone_macs_match_an_independent_count(gs):
    g, P = gs
    out = backbone_macs(g, prop_schedule(P, g.depth, g.num_image_tokens))
    n, attn, mlp = g.num_tokens, [], []
    for p in P:
        attn.append(n)
        n -= p
        mlp.append(n)
    assert out["tokens"] == attn
    assert out["total"] == plain_vit_macs(g, attn, mlp), (g, P)
    assert out["total"] == sum(v for k, v in out.items() if k not in ("total", "tokens"))


def test_deit_small_is_4_6_gmacs():
    assert round(backbone_macs(PRESETS["deit_small"])["total"] / 1e9, 1) == 4.6
    assert round(backbone_macs(PRESETS["deit_base"])["total"] / 1e9, 1) == 17.6


@given(geometry_and_schedule(), st.integers(0, 40))
def test_tome_schedule_clamps_to_half_of_the_unprotected_tokens(gs, r):
    g, _ = gs
    n = g.num_tokens
    for r_l in tome_schedule(r, g.depth, g.num_tokens, int(g.prefix.class_token)):
        assert r_l == min(r, (n - int(g.prefix.class_token)) // 2)
        n -= r_l
    assert n >= 1


def test_tome_r16_deit_is_clamped_in_the_last_layer():
    g = PRESETS["deit_small"]
    assert tome_schedule(16, g.depth, g.num_tokens, 1) == [16] * 11 + [10]


def test_gtp_schedule_errors():
    g = PRESETS["deit_small"]
    with pytest.raises(ValueError, match="17 of the 9 image tokens left at block 11; at most 8"):
        prop_schedule(17, g.depth, g.num_image_tokens)
    with pytest.raises(ValueError, match="depth=12"):
        prop_schedule([1, 2], g.depth, g.num_image_tokens)
    with pytest.raises(ValueError, match=r"num_prop=-1 must be an integer >= 0"):
        prop_schedule(-1, g.depth, g.num_image_tokens)


def test_tables_within_rounding_of_the_supplement():
    # Every column of Tables 1-2 is "approximate"; ours must land within 0.15 GMACs of each.
    from complexity.report import tables_check

    for row in tables_check():
        assert abs(row["gtp_gmacs"] - row["table_gmacs"]) < 0.15, row
        assert abs(row["tome_gmacs"] - row["table_gmacs"]) < 0.15, row
