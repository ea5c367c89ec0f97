"""A sparsity threshold per row instead of one per head."""

from gtp_ref.backends.dense import *  # noqa: F401,F403


def sparsify_attention(attn, sparsity):
    N = attn.shape[-1]
    k = int(N * (1.0 - sparsity))
    if sparsity >= 1 or k < 1:
        return attn
    tau = attn.kthvalue(k, dim=-1, keepdim=True).values
    return attn.masked_fill(attn < tau, 0.0)
