"""ToMe on the same backbone: the official implementation's vectors, its invariants, and
agreement with the complexity model's schedule."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref.config import ViTConfig
from gtp_ref.conformance.seeded import tome_model_for, tome_vectors
from gtp_ref.diagnostics import tome_margin
from gtp_ref.schedule import clamp_r, tome_schedule
from gtp_ref.tome import ToMeViT, bipartite_soft_matching, merge_wavg
from gtp_ref.vit import ViT
from tests.helpers import build, images_for, plain_vit, tensors, tome_configs

VECTORS = tome_vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['id']}-{v['family']}" for v in VECTORS])
def test_logits_match_the_official_tome(vector):
    """Vectors computed by running the official ToMe (tome.patch.timm) on timm's ViT, float64:
    with and without [CLS], token and average pooling, int and per-block schedules."""
    model, images = tome_model_for(vector)
    with torch.no_grad():
        trace = model.forward_trace(images)
    want = torch.tensor(vector["logits"], dtype=torch.float64)
    assert trace.merged == vector["merged_per_layer"], vector["config"]
    assert trace.token_sizes.shape[1] == vector["final_tokens"]
    assert trace.token_sizes.sum(-1).tolist() == vector["sizes_sum"]
    assert torch.allclose(trace.logits, want, rtol=1e-6, atol=1e-8), (
        f"{vector['id']}: max abs error {(trace.logits - want).abs().max().item():.3e}, config "
        f"{vector['config']}"
    )


def test_without_a_class_token_unmerged_tokens_follow_their_score():
    """The official order: with [CLS] the unmerged A tokens keep their order, without one they
    come by descending best-match score (which the next block's alternating split sees)."""
    # A = tokens 0, 2, 4, 6; B = 1, 3, 5.  Best-match scores of A: 0.0, 0.6, 1.0, 0.8
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.6, 0.8]]])
    no_cls = bipartite_soft_matching(m, 1, class_token=False)
    assert no_cls.src.tolist() == [[2]] and no_cls.unm.tolist() == [[3, 1, 0]]
    cls = bipartite_soft_matching(m, 1, class_token=True)
    assert cls.src.tolist() == [[2]] and cls.unm.tolist() == [[0, 1, 3]]


def test_r_can_be_changed_and_is_checked_on_assignment():
    model = ToMeViT(ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2), r=2)
    model.r = 16
    assert model.r == [16, 16]
    model.r = [np.int32(1), 0]
    assert model.r == [1, 0] and all(type(r) is int for r in model.r)
    for bad, error, match in [
        ([1], ValueError, "depth=2"),
        (-1, ValueError, "r=-1"),
        ("4", TypeError, "r='4'"),
        (1.5, TypeError, "r=1.5"),
        ([1, None], TypeError, r"r\[1\]=None"),
    ]:
        with pytest.raises(error, match=match):
            model.r = bad
        assert model.r == [1, 0]


@given(tome_configs(), st.booleans())
def test_sizes_sum_to_the_token_count(cfg, ties):
    model = build(cfg)
    with torch.no_grad():
        trace = model.forward_trace(images_for(cfg, 2, ties=ties))
    N = model.num_image_tokens + int(cfg["class_token"])
    assert (trace.token_sizes.sum(-1) == N).all(), trace.token_sizes
    assert trace.token_sizes.shape[1] == N - sum(trace.merged)
    assert (trace.token_sizes >= 1).all()
    if cfg["class_token"]:
        assert (trace.token_sizes[:, 0] == 1).all(), "[CLS] is never merged"


@given(tome_configs())
def test_merged_counts_follow_the_complexity_models_clamp(cfg):
    model = build(cfg)
    with torch.no_grad():
        trace = model.forward_trace(images_for(cfg, 1))
    g = model.config
    n = model.num_image_tokens + int(cfg["class_token"])
    expected = []
    for r in cfg["r"]:
        expected.append(clamp_r(r, n, int(cfg["class_token"])))
        n -= expected[-1]
    assert trace.merged == expected
    if cfg["img_size"][0] == cfg["img_size"][1]:
        assert trace.merged == tome_schedule(cfg["r"], g.depth, g.num_tokens, int(g.prefix.class_token))


@given(tome_configs(), st.integers(1, 3))
def test_r_zero_is_the_plain_backbone(cfg, B):
    cfg["r"] = 0
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
        assert torch.allclose(model(x), want, rtol=1e-10, atol=1e-10)


@given(tome_configs())
def test_each_sample_is_the_same_alone_and_in_a_batch(cfg):
    model, x = build(cfg), images_for(cfg, 3)
    with torch.no_grad():
        batched = model.forward_trace(x, record=True)
        for b in range(3):
            alone = model.forward_trace(x[b : b + 1], record=True)
            assume(min(tome_margin(alone), tome_margin(batched)) > 1e-9)
            assert torch.allclose(alone.logits, batched.logits[b : b + 1], rtol=1e-9, atol=1e-10)


@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.booleans(), st.integers(0, 8), st.data())
def test_merge_is_the_size_weighted_average(B, N, C, class_token, r, data):
    x = data.draw(tensors((B, N, C)))
    size = data.draw(tensors((B, N), ties=True, low=1, high=4))
    if class_token:
        size[:, 0] = 1.0  # as in the model: [CLS] always has size 1
    match = bipartite_soft_matching(data.draw(tensors((B, N, 3))), r, class_token)
    out, out_size = merge_wavg(x, size, match)
    r = clamp_r(r, N, int(class_token))
    assert out.shape == (B, N - r, C)
    for b in range(B):
        groups = {1 + 2 * j: [1 + 2 * j] for j in range(N // 2)}  # B tokens by original index
        for s, d in zip(match.src[b].tolist(), match.dst[b].tolist()):
            groups[1 + 2 * d].append(2 * s)
        rows = [[2 * a] for a in match.unm[b].tolist()] + list(groups.values())
        for k, members in enumerate(rows):
            w = size[b, members]
            want = (w[:, None] * x[b, members]).sum(0) / w.sum()
            assert torch.allclose(out[b, k], want, rtol=1e-12, atol=1e-12), (b, members)
            assert out_size[b, k] == w.sum()
        if class_token:
            assert torch.equal(out[b, 0], x[b, 0])


def test_matching_picks_the_most_similar_pairs():
    # tokens: A = 0, 2, 4; B = 1, 3.  Token 2 equals token 3; token 4 is close to token 1.
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.1, 1.0]]])
    match = bipartite_soft_matching(m, 1, class_token=True)
    assert match.src.tolist() == [[1]] and match.dst.tolist() == [[1]]  # A[1] = token 2 -> B[1] = token 3
    match = bipartite_soft_matching(m, 2, class_token=True)
    assert match.src.tolist() == [[1, 2]] and match.dst.tolist() == [[1, 0]]
    assert match.unm.tolist() == [[0]], "[CLS] stays"


def test_fused_attention_matches_explicit():
    cfg = dict(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2)
    x = images_for(cfg, 2)
    with torch.no_grad():
        for cls in (ViT, lambda c, **k: ToMeViT(c, r=3, **k)):
            torch.manual_seed(0)
            a = cls(ViTConfig.of(**cfg)).double().eval()
            b = cls(ViTConfig.of(**cfg), fused_attn=True).double().eval()
            b.load_state_dict(a.state_dict())
            assert torch.allclose(a(x), b(x), rtol=1e-10, atol=1e-12)


def test_bad_r():
    with pytest.raises(ValueError, match="r=-1"):
        ToMeViT(ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2), r=-1)
    with pytest.raises(ValueError, match="depth=2"):
        ToMeViT(ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2), r=[1])
