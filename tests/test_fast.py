"""The fast backend's own parts: the threshold by topk, the lazy graph, the fused attention path
(its Triton kernels and the whole model on it), no host synchronisation and CUDA-graph replay.
Its equality with the dense reference (ops, models, the authors' vectors, CUDA) is tested beside
the sparse backend's in test_sparse.py.

The fused tests (marker ``fused``) run where the kernels do: compiled on CUDA, or in Triton's
interpreter on CPU tensors when TRITON_INTERPRET=1 is set before ``gtp_ref`` is imported --
``test_fused_path_in_the_triton_interpreter`` runs them so in a fresh process.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref import dense, fast
from gtp_ref.diagnostics import margin
from gtp_ref.select import COLUMN_SELECTIONS
from tests.helpers import (
    DTYPES,
    FUSED,
    NEAR_TIE,
    build,
    configs,
    images_for,
    model_for,
    official_vectors,
    tensors,
)

ROOT = Path(__file__).resolve().parents[1]
try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


@st.composite
def rows_and_k(draw, dtypes=DTYPES, max_len=300):
    R, L = draw(st.integers(1, 4)), draw(st.integers(1, max_len))
    x = draw(tensors((R, L), dtype=draw(st.sampled_from(dtypes)), ties=draw(st.booleans())))
    return x, draw(st.integers(1, L))


@given(rows_and_k())
def test_kth_smallest_is_kthvalue(case):
    x, k = case
    assert torch.equal(fast.kth_smallest(x, k), x.kthvalue(k, dim=-1).values)


@given(st.data())
def test_sparsify_attention_equals_dense(data):
    B, H, N = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12))
    attn = data.draw(tensors((B, H, N, N), ties=data.draw(st.booleans()), low=0, high=1))
    theta = data.draw(st.sampled_from([1.0, 0.999, 0.9, 0.6, 0.3, 0.01]))
    assert torch.equal(fast.sparsify_attention(attn, theta), dense.sparsify_attention(attn, theta))


def test_lazy_graph_blocks_are_the_dense_blocks():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    A, G = dense.token_graph(x, (3, 4), "mixed", 3), fast.token_graph(x, (3, 4), "mixed", 3)
    rows, cols = torch.tensor([[5, 0, 7], [11, 2, 3]]), torch.tensor([[1, 5], [0, 10]])
    assert torch.equal(G.block(rows, cols), torch.stack([A[b][rows[b]][:, cols[b]] for b in range(2)]))
    assert G.shape == (2, 12, 12) and G.A0.shape == (2, 13, 13)
    assert (G.A0[:, 12] == 0).all() and (G.A0[:, :, 12] == 0).all(), "the mean token's node has no edges"


def test_cuda_graphed_needs_a_cuda_input():
    with pytest.raises(ValueError, match="CUDA example input"):
        fast.cuda_graphed(lambda x: x, torch.zeros(2))


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_map_kernels(dtype):
    """softmax_rows and mask_and_reduce against torch: the map to rounding, the masking exact; the
    scale applied in float32 and rounded to the logits' dtype, as torch does (1/sqrt(6) is not a
    float16)."""
    from gtp_ref import _triton
    g = torch.Generator().manual_seed(0)
    B, H, N = 2, 3, 13
    logits = torch.randn(B, H, N, N, generator=g, dtype=dtype).to(FUSED)
    s = (torch.rand(B, N, generator=g, dtype=dtype) + 0.5).to(FUSED)
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    want = (logits * 0.125 + s.log()[:, None, None, :]).softmax(-1)
    assert torch.allclose(_triton.softmax_rows(logits, 0.125, s.log(), dtype), want, **tol)
    tau = want.reshape(B * H, -1).kthvalue(60, -1).values
    ref = want.masked_fill(want < tau.view(B, H, 1, 1), 0.0)
    for out_dtype in ([torch.float64] if dtype == torch.float64 else [torch.float32, torch.float16]):
        masked, col_sums, diag = _triton.mask_and_reduce(want, tau, out_dtype)
        assert torch.equal(masked, ref.to(out_dtype)) and torch.equal(diag, ref.diagonal(dim1=-2, dim2=-1))
        assert torch.allclose(col_sums, ref.sum(2), **tol)
    if dtype == torch.float32:
        half, scale = logits.half(), 6 ** -0.5
        want16 = ((half * scale).float() + s.log()[:, None, None, :]).softmax(-1)
        assert torch.allclose(_triton.softmax_rows(half, scale, s.log()), want16, rtol=1e-6, atol=1e-7)


PAPER = dict(img_size=64, patch_size=8, num_classes=10, embed_dim=32, depth=4, num_heads=2,
             num_prop=[8, 6, 4, 2], graph="mixed", num_neighbours=4, selection="mixed_attn_max",
             propagation="graph", sparsity=0.6, alpha=0.1, token_scale=True)


@pytest.mark.cuda
def test_cuda_fast_forward_never_synchronises():
    model = build({**PAPER, "backend": "fast"}, dtype=torch.float32).cuda()
    x = images_for(PAPER, 4, dtype=torch.float32).cuda()
    with torch.no_grad():
        model(x)  # compile the kernels first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_graph_replay_equals_eager():
    model = build({**PAPER, "backend": "fast"}, dtype=torch.float32).cuda()
    x = images_for(PAPER, 4, dtype=torch.float32).cuda()
    with torch.no_grad():
        eager = model(x).clone()
        replay = fast.cuda_graphed(model, x)
        assert torch.equal(replay(x), eager)
        y = images_for(PAPER, 4, seed=7, dtype=torch.float32).cuda()
        assert torch.equal(replay(y).clone(), model(y)), "the graph reads its new input"


@pytest.mark.fused
@given(configs(propagation="graph"), st.sampled_from(COLUMN_SELECTIONS), st.booleans(),
       st.sampled_from([torch.float64, torch.float32]))
def test_fused_model_equals_dense(cfg, selection, ties, dtype):
    """The whole model on the fused path (every kernel but the threshold's selection), on the GPU
    or in Triton's interpreter, against the dense reference on the CPU in the same dtype, barring
    decisions within rounding of a tie."""
    cfg = {**cfg, "selection": selection}
    x = images_for(cfg, 2, ties=ties, dtype=dtype)
    model = build({**cfg, "backend": "fast"}, dtype=dtype).to(FUSED)
    with torch.no_grad():
        assert fast.attend_and_score(model.blocks[0], model.embed(x.to(FUSED)), None, cfg["sparsity"],
                                     selection, cfg["class_token"]) is not None, "the fused path is taken"
        trace = build(cfg, dtype=dtype).forward_trace(x, record=True)
        got = model(x.to(FUSED)).cpu()
    assume(margin(trace) > NEAR_TIE[dtype])
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5)  # as test_models_agree
    assert torch.allclose(got, trace.logits, rtol=rtol, atol=atol), (FUSED, dtype, cfg)


FUSED_VECTORS = [v for v in official_vectors() if v["config"]["selection"] in COLUMN_SELECTIONS]


@pytest.mark.fused
@pytest.mark.parametrize("vector", FUSED_VECTORS, ids=lambda v: v["id"])
def test_fused_path_reproduces_the_authors_vectors(vector):
    """The authors' logits from the fast backend's fused path."""
    model, images = model_for(vector, backend="fast")
    model, images = model.to(FUSED), images.to(FUSED)
    cfg = vector["config"]
    with torch.no_grad():
        assert fast.attend_and_score(model.blocks[0], model.embed(images), None, cfg["sparsity"],
                                     cfg["selection"], cfg["class_token"]) is not None, "the fused path is taken"
        logits = model(images).cpu()
    assert torch.allclose(logits, torch.tensor(vector["logits"], dtype=torch.float64), rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (the kernels extra; its interpreter runs the kernels on the CPU)")
def test_fused_path_in_the_triton_interpreter():
    """The fused tests above, in a fresh process with TRITON_INTERPRET=1: the kernels and the
    fused path end to end without a GPU."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "fused",
                        "tests/test_fast.py"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    want = f"{2 + 1 + len(FUSED_VECTORS)} passed"
    assert r.returncode == 0 and want in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
