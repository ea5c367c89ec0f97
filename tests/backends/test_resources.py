"""The CUDA path's kernels fit a Hopper GPU: every variant the fast backend can launch, compiled
ahead of time for sm_90a here (no GPU; Triton's bundled ptxas), without register spills and within
the shared memory a block may have (``python -m gtp_ref.apps.bench resources``).  Skipped, with the
reason, where Triton cannot compile for the target."""

import pytest
import torch

from gtp_ref.apps.bench import resources

WHY = resources.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"cannot compile for sm_90 here: {WHY}")


def test_every_variant_fits():
    rows = [resources.compile_variant(v) for v in resources.variants(list(resources.DTYPES))]
    bad = [f"{r['variant']}: {r['why']}" for r in rows if not r["ok"]]
    assert not bad, bad
    assert max(r["shared"] for r in rows) <= resources.SHARED_LIMIT


def test_the_router_sends_the_kernels_only_checked_variants():
    """Every (dtype, head width) that attention_path routes to the kernels is a checked variant."""
    from gtp_ref.backends.fast import cuda

    checked = {(v.dtype, v.block_d) for v in resources.variants(list(resources.DTYPES)) if v.block_d}
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
    for name in names.values():
        for d in range(1, cuda.MAX_HEAD_DIM + 1):
            assert (name, cuda.head_block(d)) in checked, (name, d)
    with pytest.raises(ValueError, match="heads up to 128 wide"):
        cuda.attention(*(torch.zeros(1, 1, 4, 129) for _ in range(3)))
