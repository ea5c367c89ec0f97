"""Spec section 3.4: token scores from the (sparsified) attention map."""

import pytest
import torch
from hypothesis import given

from gtp_ref._checks import SELECTIONS
from gtp_ref.conformance.harness import assert_close, call, load_impl, oracle
from gtp_ref.conformance.strategies import attention_maps

impl = load_impl()
DETERMINISTIC = [s for s in SELECTIONS if s != "random"]


@pytest.mark.parametrize("selection", DETERMINISTIC)
@given(am=attention_maps())
def test_scores_match_the_reference(selection, am):
    attn, prefix_tokens = am
    if selection.startswith("cls_attn") and not prefix_tokens:
        return
    got = impl.token_scores(attn, selection, prefix_tokens, None)
    assert_close(
        call("token_scores", attn=attn, selection=selection, prefix_tokens=prefix_tokens),
        got,
        oracle.token_scores(attn, selection, prefix_tokens),
        rtol=1e-9,
        atol=1e-12,
        test=f"test_scores_match_the_reference[{selection}]",
    )


@given(am=attention_maps())
def test_random_scores_have_one_value_per_image_token(am):
    attn, prefix_tokens = am
    got = torch.as_tensor(impl.token_scores(attn, "random", prefix_tokens, torch.Generator().manual_seed(0)))
    n = attn.shape[-1] - int(prefix_tokens)
    assert tuple(got.shape) == (attn.shape[0], n), (
        f"random scores: shape {list(got.shape)}, expected {[attn.shape[0], n]}"
    )


def test_cls_selection_without_class_token_is_a_value_error():
    with pytest.raises(ValueError):
        impl.token_scores(torch.rand(1, 1, 3, 3, dtype=torch.float64), "cls_attn_max", False, None)
