"""The backbone as one value: ``gtp_ref.config.ViTConfig`` -- frozen, checked where it is made,
taking timm's keywords flat (each field belongs to one part), and the one thing the models and the
cost model read; the authors' table of settings beside the paper's."""

import dataclasses

import pytest
import torch

from gtp_ref.config import OWNER, PARTS, PRESETS, ViTConfig
from gtp_ref.presets import AUTHORS_DEIT_BASE, authors_deit_base_settings, paper_settings
from gtp_ref.vit import Block, PostNormBlock, ViT


@pytest.mark.parametrize("name", PRESETS)
def test_a_config_is_its_flat_fields(name):
    config = PRESETS[name]
    assert ViTConfig.of(**config.flat()) == config
    assert config.replace() == config and hash(config) == hash(ViTConfig.of(**config.flat()))


def test_every_field_belongs_to_one_part_and_is_commented():
    import inspect

    from gtp_ref import config as module

    source = inspect.getsource(module)
    names = [f.name for cls in PARTS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(OWNER)
    for name in names:  # one line each, with its comment
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{name}:"))
        assert "#" in line or name == "norm_eps", line


def test_a_config_is_frozen_and_checked_when_made_or_changed():
    config = PRESETS["deit_small"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3
    with pytest.raises(ValueError, match="embed_dim=384 is not divisible by num_heads=5"):
        config.replace(num_heads=5)
    with pytest.raises(TypeError, match="heads: not a field of ViTConfig"):
        config.replace(heads=5)
    with pytest.raises(TypeError, match="patches must be a gtp_ref.config.PatchConfig, got dict"):
        ViTConfig(patches={"img_size": 32})
    changed = config.replace(num_classes=10, img_size=(64, 32))
    assert changed.head.num_classes == 10 and changed.grid == (4, 2) and config.head.num_classes == 1000


def test_the_cost_model_counts_the_models_config():
    from complexity.backbone import backbone_macs
    from gtp_ref.cost import measure_macs

    config = ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    measured = measure_macs(ViT(config, fused_attn=True).eval(), torch.zeros(1, 3, 32, 32))
    assert measured["backbone"] == backbone_macs(config)["total"]


def test_a_block_variant_is_a_class():
    pre = ViT(ViTConfig.of(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2))
    post = ViT(ViTConfig.of(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, post_norm=True))
    assert type(pre.blocks[0]) is Block and type(post.blocks[0]) is PostNormBlock
    from gtp_ref.model import GTPPostNormBlock, GTPViT
    from gtp_ref.tome import ToMePostNormBlock, ToMeViT

    assert type(GTPViT(post.config, num_neighbours=1).blocks[0]) is GTPPostNormBlock
    assert type(ToMeViT(post.config).blocks[0]) is ToMePostNormBlock


def test_the_models_take_a_config_and_a_stem_only_where_it_says_so():
    with pytest.raises(TypeError, match=r"config must be a gtp_ref.config.ViTConfig \(ViTConfig.of"):
        ViT({"img_size": 32})
    with pytest.raises(ValueError, match="a hybrid ViT's stem goes with stem_channels > 0"):
        ViT(
            ViTConfig.of(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2),
            stem=torch.nn.Identity(),
        )


def test_the_authors_table_is_offered_beside_the_papers_settings():
    """DeiT-B's best (theta, alpha) per P from the authors' README (not the default)."""
    assert sorted(AUTHORS_DEIT_BASE) == list(range(1, 15))
    s11, s14 = authors_deit_base_settings(11), authors_deit_base_settings(14)
    assert (s11.sparsity, s11.alpha, s11.num_prop) == (0.8, 0.3, 11) and (s14.sparsity, s14.alpha) == (
        0.8,
        0.3,
    )
    assert s11.replace(sparsity=0.5, alpha=0.1) == paper_settings("deit_base", num_prop=11)
    assert paper_settings("deit_base").sparsity == 0.5  # the default stays the paper's
    with pytest.raises(ValueError, match="the authors' table covers P = 1 to 14"):
        authors_deit_base_settings(15)
