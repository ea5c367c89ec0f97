"""Spec section 3.2: attention sparsity, k = int(N^2 (1 - theta)), one threshold per head."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from gtp_ref.conformance.harness import assert_close, assert_shape, call, load_impl, oracle
from gtp_ref.conformance.strategies import attention_maps

impl = load_impl()
THETAS = st.one_of(st.sampled_from([1.0, 0.9, 0.6, 0.5, 0.3, 0.999]), st.floats(0.01, 1.0))


@given(attention_maps(), THETAS)
def test_sparsify_matches_the_reference_exactly(am, theta):
    """Entries below the k-th smallest of each head's whole map become 0; others are untouched."""
    attn, _ = am
    got = impl.sparsify_attention(attn, theta)
    assert_close(
        call("sparsify_attention", attn=attn, sparsity=theta),
        got,
        oracle.sparsify_attention(attn, theta),
        rtol=0,
        atol=0,
        test="test_sparsify_matches",
    )


def test_k_is_truncated_in_double_precision():
    """N = 10, theta = 0.9: k = int(100 * 0.09999999999999998) = 9, so 8 entries are zeroed."""
    attn = (torch.arange(100, dtype=torch.float64) + 1).reshape(1, 1, 10, 10) / 1000
    got = torch.as_tensor(impl.sparsify_attention(attn, 0.9))
    assert_shape(
        call("sparsify_attention", attn=attn, sparsity=0.9),
        got,
        attn.shape,
        test="test_k_is_truncated_in_double_precision",
    )
    zeros = int((got == 0).sum())
    assert zeros == 8, (
        f"{call('sparsify_attention', attn=attn, sparsity=0.9)} zeroed {zeros} entries, "
        "expected 8 (k = 9, entries below the 9th smallest)"
    )


def test_threshold_is_per_head_not_per_row():
    attn = torch.tensor([[[[0.9, 0.1], [0.8, 0.2]]]], dtype=torch.float64)  # k = int(4 * 0.5) = 2
    got = torch.as_tensor(impl.sparsify_attention(attn, 0.5))
    want = torch.tensor([[[[0.9, 0.0], [0.8, 0.2]]]], dtype=torch.float64)  # tau = 0.2 over the map
    assert torch.equal(got.to(want.dtype), want), (
        f"per-head threshold: got {got.tolist()}, expected {want.tolist()}"
    )


def test_k_zero_is_a_no_op():
    attn = torch.rand(2, 2, 3, 3, dtype=torch.float64).softmax(-1)
    got = torch.as_tensor(impl.sparsify_attention(attn, 0.95))  # k = int(9 * 0.05) = 0
    assert torch.equal(got.to(attn.dtype), attn), "k = 0 must leave the map unchanged (and not raise)"
