"""The fast backend's own parts: the k-th value selection (Triton kernel and fallback), the lazy
graph, no host synchronisation and CUDA-graph replay.  Its equality with the dense reference
(ops, models, the authors' vectors, CUDA) is tested beside the sparse backend's in test_sparse.py.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, strategies as st

from gtp_ref import dense, fast
from gtp_ref.select import COLUMN_SELECTIONS
from tests.helpers import DTYPES, NEAR_TIE, build, configs, images_for, model_for, official_vectors, tensors

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
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


# The kernel itself: on CPU tensors through Triton's interpreter (a fresh process, since
# TRITON_INTERPRET is read when the kernel is defined); on the GPU compiled, below.
INTERPRETED_CHECK = textwrap.dedent("""
    import json, torch
    from gtp_ref import _triton as K
    failures, g = [], torch.Generator().manual_seed(0)
    # Small samples and digit widths keep the (slow) interpreter quick; spread=0 forces the
    # radix fallback.  Both paths must be exact on zeros, signed zeros, ties and subnormals.
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for L in (1, 2, 7, 300):
            x = torch.randn(5, L, generator=g).to(dtype)
            x[0, : L // 2] = 0.0                                           # a run of zeros
            x[1, : min(3, L)] = -0.0                                       # signed zeros
            x[2] = torch.randint(-3, 3, (L,), generator=g).to(dtype)       # heavy ties
            # subnormals of float32 / float16 (the interpreter's bfloat16 emulation mishandles
            # bfloat16 subnormals when loading them, so bfloat16's are checked on the GPU only)
            x[3] = x[3].abs() * {torch.float32: 1e-38, torch.float16: 1e-6, torch.bfloat16: 1e-30}[dtype]
            x[4] = torch.rand(L, generator=g).to(dtype)                    # attention-like, in [0, 1)
            for k in sorted({1, L // 3 + 1, L}):
                want = x.float().kthvalue(k, dim=-1).values.to(dtype)
                for spread in (8, 0):
                    got = K.kth_smallest(x, k, sample=64, spread=spread, digits=(8, 12, 12))
                    if not bool((got == want).all()):
                        failures.append(["select", str(dtype), L, k, spread, got.tolist(), want.tolist()])
                    if L in (7, 300):  # spread 0: the sampled bracket misses, the full range is searched
                        got = K.kth_smallest_bracket(x, k, sample=64, spread=spread, buckets=16, chunk=64)
                        if not bool((got == want).all()):
                            failures.append(["bracket", str(dtype), L, k, spread, got.tolist(), want.tolist()])
    # the fused attention map: softmax of scaled logits + log s; mask, cast, column sums, diagonal
    B, H, N = 2, 3, 13
    logits, s = torch.randn(B, H, N, N, generator=g), torch.rand(B, N, generator=g) + 0.5
    probs = K.softmax_rows(logits, 0.125, s.log())
    want = (logits * 0.125 + s.log()[:, None, None, :]).softmax(-1)
    if not torch.allclose(probs, want, rtol=1e-6, atol=1e-7):
        failures.append(["softmax", (probs - want).abs().max().item()])
    tau = want.reshape(B * H, -1).kthvalue(60, -1).values
    masked, col_sums, diag = K.mask_and_reduce(want, tau, torch.float16)
    ref = want.masked_fill(want < tau.view(B, H, 1, 1), 0.0)
    if not (torch.equal(masked, ref.half()) and torch.equal(diag, ref.diagonal(dim1=-2, dim2=-1))
            and torch.allclose(col_sums, ref.sum(2), rtol=1e-6, atol=1e-7)):
        failures.append(["mask_and_reduce"])
    p64 = K.softmax_rows(logits.double(), 0.125, s.log().double(), torch.float64)
    want64 = (logits.double() * 0.125 + s.log().double()[:, None, None, :]).softmax(-1)
    m64, c64, d64 = K.mask_and_reduce(want64, tau.double())
    ref64 = want64.masked_fill(want64 < tau.double().view(B, H, 1, 1), 0.0)
    if not (torch.allclose(p64, want64, rtol=1e-13, atol=1e-15) and torch.equal(m64, ref64)
            and torch.allclose(c64, ref64.sum(2), rtol=1e-13, atol=1e-15)):
        failures.append(["float64"])
    # the scale in float32, rounded to the logits' dtype, as torch does (1/sqrt(6) is not a float16)
    half, scale = logits.half(), 6 ** -0.5
    want16 = ((half * scale).float() + s.log()[:, None, None, :]).softmax(-1)
    if not torch.allclose(K.softmax_rows(half, scale, s.log()), want16, rtol=1e-6, atol=1e-7):
        failures.append(["softmax float16, inexact scale"])
    # the one-kernel candidate: q, k strided views of a qkv projection, head dim 8 (padded to 16)
    qkv = torch.randn(B, N, 3, H, 8, generator=g)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    for dtype in (torch.float32, torch.float16):  # bfloat16: the interpreter's tl.dot is wrong on it (Triton 3.6, 3.8)
        qq, kk = q.to(dtype), k.to(dtype)
        want = (((qq @ kk.transpose(-2, -1)) * scale).float() + s.log()[:, None, None, :]).softmax(-1)
        got = K.attention_probs(qq, kk, scale, s.log())
        if not (got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-6, atol=1e-7)):
            failures.append(["attention_probs", str(dtype), (got - want).abs().max().item()])
    print(json.dumps(failures[:5]))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (the kernels extra; its interpreter runs the kernels on the CPU)")
def test_radix_kernel_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_kernel_rejects_bad_arguments():
    if not HAS_TRITON:
        pytest.skip("needs triton (the kernels extra)")
    from gtp_ref._triton import kth_smallest
    x = torch.rand(2, 5)
    for k in (0, 6):
        with pytest.raises(ValueError, match=rf"k={k} must be in \[1, 5\]"):
            kth_smallest(x, k)
    with pytest.raises(ValueError, match="float64"):
        kth_smallest(x.double(), 1)
    with pytest.raises(ValueError, match="adding up to 32"):
        kth_smallest(x, 1, digits=(8, 8, 8))
    from gtp_ref._triton import kth_smallest_bracket
    with pytest.raises(ValueError, match=r"buckets=100 must be a power of 2 in \[2, 4096\]"):
        kth_smallest_bracket(x, 1, buckets=100)
    from gtp_ref._triton import attention_probs
    q = torch.rand(1, 1, 4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32 q and k"):
        attention_probs(q, q, 1.0)
    big = torch.rand(1, 1, 513, 8)
    with pytest.raises(ValueError, match=r"N=513 must be <= 512"):
        attention_probs(big, big, 1.0)


def marked(*marks):
    """A decorator applying ``marks`` (first listed = outermost)."""
    def apply(f):
        for mark in reversed(marks):
            f = mark(f)
        return f
    return apply


on_gpu = marked(cuda, pytest.mark.cuda, pytest.mark.skipif(not HAS_TRITON, reason="needs triton"))


@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernel_equals_kthvalue(dtype):
    from gtp_ref import _triton
    g = torch.Generator(device="cuda").manual_seed(0)
    for L in (1, 100, 197 * 197, 50_000, 70_000):
        x = torch.rand(64, L, generator=g, device="cuda").to(dtype)
        x[::3] = torch.randint(0, 4, (x[::3].shape), generator=g, device="cuda").to(dtype)  # ties
        x[1::3] *= torch.finfo(dtype).tiny  # subnormals
        for k in sorted({1, int(L * 0.4) or 1, L}):
            want = x.float().kthvalue(k, dim=-1).values.to(dtype)
            assert torch.equal(fast.kth_smallest(x, k), want), (dtype, L, k)
            assert torch.equal(_triton.kth_smallest(x, k, spread=0), want), ("fallback", dtype, L, k)
            assert torch.equal(_triton.kth_smallest_radix(x, k), want), ("radix", dtype, L, k)
            assert torch.equal(_triton.kth_smallest_bracket(x, k), want), ("bracket", dtype, L, k)
            assert torch.equal(_triton.kth_smallest_bracket(x, k, spread=0), want), ("restart", dtype, L, k)


@on_gpu
def test_cuda_fused_map_kernels():
    from gtp_ref import _triton
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, N = 4, 3, 197
    logits = torch.randn(B, H, N, N, generator=g, device="cuda")
    s = torch.rand(B, N, generator=g, device="cuda") + 0.5
    want = (logits * 0.125 + s.log()[:, None, None, :]).softmax(-1)
    assert torch.allclose(_triton.softmax_rows(logits, 0.125, s.log()), want, rtol=1e-5, atol=1e-7)
    half = logits.half()
    want16 = ((half * 0.125).float() + s.log()[:, None, None, :]).softmax(-1)
    assert torch.allclose(_triton.softmax_rows(half, 0.125, s.log()), want16, rtol=1e-5, atol=1e-7)
    tau = want.reshape(B * H, -1).kthvalue(N * N // 2, -1).values
    ref = want.masked_fill(want < tau.view(B, H, 1, 1), 0.0)
    for dtype in (torch.float32, torch.float16):
        masked, col_sums, diag = _triton.mask_and_reduce(want, tau, dtype)
        assert torch.equal(masked, ref.to(dtype)) and torch.equal(diag, ref.diagonal(dim1=-2, dim2=-1))
        assert torch.allclose(col_sums, ref.sum(2), rtol=1e-5, atol=1e-7)


@on_gpu
@pytest.mark.parametrize("dtype, atol", [
    # The kernel sums the products in another order than cuBLAS, so a logit may round to the
    # neighbouring value: |q k^T| < 64 here (d = 64, unit normal entries), where a float16 ulp is
    # 2^-5; times the scale 1/8 that is 0.004, which moves a probability by at most
    # p (1 - p) 0.004 <= 1e-3.  A bfloat16 ulp is 8x larger.  float32 (IEEE products): rounding.
    (torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_cuda_attention_probs_candidate(dtype, atol):
    from gtp_ref import _triton
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, N, d = 8, 6, 197, 64
    q, k, _ = torch.randn(B, N, 3, H, d, generator=g, device="cuda").to(dtype).permute(2, 0, 3, 1, 4).unbind(0)
    log_s = torch.rand(B, N, generator=g, device="cuda").add(0.5).log()
    want = ((q @ k.transpose(-2, -1)) * 0.125 + log_s[:, None, None, :]).softmax(-1, dtype=torch.float32)
    got = _triton.attention_probs(q, k, 0.125, log_s)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.allclose(got.sum(-1), torch.ones_like(got[..., 0]), atol=1e-5), "rows sum to 1"
    assert torch.allclose(got, want, rtol=0, atol=atol), (dtype, (got - want).abs().max().item())


PAPER = dict(img_size=64, patch_size=8, num_classes=10, embed_dim=32, depth=4, num_heads=2,
             num_prop=[8, 6, 4, 2], graph="mixed", num_neighbours=4, selection="mixed_attn_max",
             propagation="graph", sparsity=0.6, alpha=0.1, token_scale=True)


@on_gpu
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


@on_gpu
def test_cuda_graph_replay_equals_eager():
    model = build({**PAPER, "backend": "fast"}, dtype=torch.float32).cuda()
    x = images_for(PAPER, 4, dtype=torch.float32).cuda()
    with torch.no_grad():
        eager = model(x).clone()
        replay = fast.cuda_graphed(model, x)
        assert torch.equal(replay(x), eager)
        y = images_for(PAPER, 4, seed=7, dtype=torch.float32).cuda()
        assert torch.equal(replay(y).clone(), model(y)), "the graph reads its new input"


# Where the fused kernels can run here: "cuda" (compiled), "cpu" (TRITON_INTERPRET=1), or None.
FUSED = fast.FUSED_DEVICE if fast.FUSED_DEVICE != "cuda" or torch.cuda.is_available() else None
on_fused = marked(pytest.mark.skipif(FUSED is None, reason="needs the fused kernels: CUDA with Triton, or TRITON_INTERPRET=1"),
                  *([pytest.mark.cuda] if FUSED == "cuda" else []))


@on_fused
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
        trace = build(cfg, dtype=dtype).forward_trace(x, margins=True)
        got = model(x.to(FUSED)).cpu()
    assume(trace.min_margin() > NEAR_TIE[dtype])
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5)  # as test_models_agree
    assert torch.allclose(got, trace.logits, rtol=rtol, atol=atol), (FUSED, dtype, cfg)


FUSED_VECTORS = [v for v in official_vectors() if v["config"]["selection"] in COLUMN_SELECTIONS]


@on_fused
@pytest.mark.parametrize("vector", FUSED_VECTORS, ids=lambda v: v["id"])
def test_fused_path_reproduces_the_authors_vectors(vector):
    """Issue 5's "same semantics": the authors' logits from the fast backend's fused path."""
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
    """The two fused-path tests above, in a fresh process with TRITON_INTERPRET=1: the fused path
    end to end without a GPU."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                        "tests/test_fast.py::test_fused_model_equals_dense",
                        "tests/test_fast.py::test_fused_path_reproduces_the_authors_vectors"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    want = f"{1 + len(FUSED_VECTORS)} passed"
    assert r.returncode == 0 and want in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
