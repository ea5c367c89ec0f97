"""The fast backend's own parts: the threshold by topk, the lazy graph, the attention paths
(its Triton kernels and the whole model on it), no host synchronisation and CUDA-graph replay.
Its equality with the dense reference (ops, models, the authors' vectors, CUDA) is tested beside
the sparse backend's in test_sparse.py.

The Triton tests (marker ``triton``) run where the kernels do: compiled on CUDA, or in Triton's
interpreter on CPU tensors when TRITON_INTERPRET=1 is set before ``gtp_ref`` is imported --
tests/backends/test_gpu_checks.py runs them so, as the GPU script's dry run.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref.backends import dense, fast
from gtp_ref.cuda_graphs import cuda_graphed
from gtp_ref.diagnostics import margin
from gtp_ref.select import COLUMN_SELECTIONS, sparsity_k
from tests.helpers import (
    DTYPES,
    NEAR_TIE,
    TRITON,
    build,
    configs,
    images_for,
    model_for,
    official_vectors,
    tensors,
)

ROOT = Path(__file__).resolve().parents[2]


def path_taken(model, images, selection):
    """The fast backend's attention path for the first block of ``model`` on ``images``."""
    block = model.blocks[0]
    q, _, _ = block.attn.heads(block.norm1(model.embed(images)))
    return fast.attention_path(q * block.attn.scale, selection)[0]


@st.composite
def rows_and_k(draw, dtypes=DTYPES, max_len=300):
    R, L = draw(st.integers(1, 4)), draw(st.integers(1, max_len))
    x = draw(tensors((R, L), dtype=draw(st.sampled_from(dtypes)), ties=draw(st.booleans())))
    return x, draw(st.integers(1, L))


@given(rows_and_k())
def test_kth_smallest_is_kthvalue(case):
    x, k = case
    assert torch.equal(fast.kth_smallest(x, k), x.kthvalue(k, dim=-1).values)


SPECIAL = [
    float("nan"),
    float("inf"),
    -float("inf"),
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-40,
    3.4e38,
    -3.4e38,
    1.0,
    -1.0,
]


@given(
    st.integers(1, 3),
    st.lists(st.sampled_from(SPECIAL) | st.floats(-4, 4), min_size=1, max_size=60),
    st.sampled_from(DTYPES + (torch.float16, torch.bfloat16)),
    st.data(),
)
def test_kth_smallest_of_special_values(R, values, dtype, data):
    """NaN ranks last, as in kthvalue; infinities, signed zeros, subnormals, every dtype (the
    compiled selection for float32 / float64, topk for the others)."""
    x = torch.tensor(values, dtype=torch.float64).to(dtype).repeat(R, 1)
    x = x[
        :, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    ]
    k = data.draw(st.integers(1, x.shape[1]))
    torch.testing.assert_close(
        fast.kth_smallest(x, k), x.kthvalue(k, dim=-1).values, rtol=0, atol=0, equal_nan=True
    )


@pytest.mark.parametrize("spread", [1.0, 1e-6, 0.0])
def test_kth_smallest_of_long_rows(spread):
    """Rows of 25,000 to 1,050,625 entries (N = 1025) whose values crowd one histogram bin (the
    spread) or are all equal."""
    g = torch.Generator().manual_seed(0)
    for R, L in ((12, 25_000), (1, 1025**2)):
        x = 0.5 + spread * torch.rand(R, L, generator=g)
        for k in (1, L // 3, int(L * 0.4), L):
            assert torch.equal(fast.kth_smallest(x, k), x.kthvalue(k, dim=-1).values), (R, L, k)


needs_native = pytest.mark.skipif(
    not fast.cpu.available(), reason="no C compiler for gtp_ref.backends.fast.cpu"
)


@needs_native
@given(st.data())
def test_native_mask_heads_is_the_reference_masking(data):
    """The compiled threshold-and-mask: the dense reference's sparsified map exactly, its
    thresholds, and the column sums / diagonal / first row the selection reads."""
    B, H, N = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 14))
    dtype = data.draw(st.sampled_from(DTYPES))
    attn = data.draw(tensors((B, H, N, N), ties=data.draw(st.booleans()), low=0, high=1, dtype=dtype))
    theta = data.draw(st.sampled_from([1.0, 0.999, 0.9, 0.6, 0.3, 0.01]))
    k = sparsity_k(N, theta) if theta < 1 else 0
    masked, col_sums, diagonal, first_row, tau = fast.cpu.mask_heads(attn, k)
    want = dense.sparsify_attention(attn, theta)
    assert torch.equal(masked, want) and torch.equal(diagonal, want.diagonal(dim1=-2, dim2=-1))
    assert torch.equal(first_row, want[:, :, 0]) and torch.allclose(
        col_sums, want.sum(2), rtol=1e-6, atol=1e-6
    )
    if k:
        assert torch.equal(tau, attn.reshape(B, H, N * N).kthvalue(k, dim=-1).values)
    else:
        assert (tau == float("-inf")).all()


@needs_native
def test_native_mask_heads_gradients():
    """Gradients reach the kept entries through the map, its column sums, diagonal and first row
    (the threshold passes none), as through the reference's masked_fill."""
    attn = torch.rand(
        2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fast.cpu.mask_heads(a, 10)[:4], (attn,))
    w = torch.randn(4, 5, dtype=torch.float64)
    masked, col_sums, diagonal, first_row, _ = fast.cpu.mask_heads(attn, 10)
    (masked.sum() + col_sums @ w[0] + diagonal @ w[1] + first_row @ w[2]).sum().backward()
    got, attn.grad = attn.grad, None
    ref = dense.sparsify_attention(attn, 0.6)
    (
        ref.sum() + ref.sum(2) @ w[0] + ref.diagonal(dim1=-2, dim2=-1) @ w[1] + ref[:, :, 0] @ w[2]
    ).sum().backward()
    assert sparsity_k(5, 0.6) == 10 and torch.allclose(got, attn.grad)


def test_kth_smallest_compiles_into_one_graph():
    """The compiled selection is a torch custom op: torch.compile keeps the threshold in the graph."""
    from gtp_ref.backends.fast import cpu

    if not cpu.available():
        pytest.skip(f"no compiled selection here: {cpu.REASON}")
    x = torch.rand(6, 500, generator=torch.Generator().manual_seed(1))
    f = torch.compile(lambda t: fast.kth_smallest(t.softmax(-1), 200) * 2, fullgraph=True, backend="eager")
    assert torch.equal(f(x), x.softmax(-1).kthvalue(200, dim=-1).values * 2)
    m = x.view(1, 6, 10, 50)[..., :10].softmax(-1)
    g = torch.compile(lambda t: fast.sparsify_attention(t, 0.6) + 1, fullgraph=True, backend="eager")
    assert torch.equal(g(m), dense.sparsify_attention(m, 0.6) + 1)


def test_kth_smallest_without_a_compiler_uses_topk():
    """Where the selection cannot be built, a warning says why once and the values stay exact."""
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from gtp_ref.backends import fast\n"
        "    from gtp_ref.backends.fast import cpu\n"
        "    x = torch.rand(4, 300)\n"
        "    a, b = fast.kth_smallest(x, 100), fast.kth_smallest(x, 7)\n"
        "assert torch.equal(a, x.kthvalue(100, -1).values) and torch.equal(b, x.kthvalue(7, -1).values)\n"
        "msgs = [str(m.message) for m in w if 'compiled CPU kernels are not available' in str(m.message)]\n"
        "assert len(msgs) == 1 and 'could not compile' in msgs[0], msgs\n"
        "print('ok', cpu.REASON)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CC": "false", "XDG_CACHE_HOME": cache}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ok false could not compile"), r.stdout + r.stderr


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


@given(st.data())
def test_token_graph_is_the_dense_graph_exactly(data):
    """The fast graph (built in place, the spatial part kept between calls) is the reference's Â
    bit for bit: every graph kind, M = 0 to n - 1, ties, rectangular and one-row grids."""
    h, w = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    n = h * w
    dtype = data.draw(st.sampled_from(DTYPES))
    x = data.draw(tensors((data.draw(st.integers(1, 3)), n, data.draw(st.integers(1, 6))), dtype=dtype))
    graph, M = data.draw(st.sampled_from(["spatial", "semantic", "mixed"])), data.draw(st.integers(0, n - 1))
    for _ in range(2):  # the second call reads the kept spatial graph
        assert torch.equal(
            fast.to_dense(fast.token_graph(x, (h, w), graph, M)), dense.token_graph(x, (h, w), graph, M)
        )


@given(st.data())
def test_token_graph_of_special_features_is_the_dense_graph(data):
    """Features with NaN, infinities, zeros (a zero-norm token) and exact ties: the compiled graph
    picks each row's M-th largest similarity in topk's order (NaN above everything) as the
    reference does, and its Â is the reference's bit for bit, NaN where the reference has NaN."""
    h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    n, dtype = h * w, data.draw(st.sampled_from(DTYPES))
    values = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0, 2.0])
    x = torch.tensor(data.draw(st.lists(values, min_size=n * 2, max_size=n * 2)), dtype=dtype).view(1, n, 2)
    graph, M = data.draw(st.sampled_from(["semantic", "mixed"])), data.draw(st.integers(0, n - 1))
    got, want = fast.to_dense(fast.token_graph(x, (h, w), graph, M)), dense.token_graph(x, (h, w), graph, M)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


@st.composite
def special_scores(draw):
    """Scores with ties, NaN, -0 / +0 and infinities; P from 0 to n (beyond the compiled limit too)."""
    B, n = draw(st.integers(1, 3)), draw(st.integers(1, 90))
    values = st.sampled_from([float("nan"), 0.0, -0.0, float("inf"), -float("inf"), 1.0, 2.0]) | st.floats(
        -3, 3
    )
    scores = torch.tensor(
        draw(st.lists(values, min_size=B * n, max_size=B * n)), dtype=draw(st.sampled_from(DTYPES))
    )
    return scores.view(B, n), draw(st.integers(0, n))


@given(special_scores())
def test_select_tokens_is_the_reference_order(case):
    """The compiled selection (no sort) names the same tokens in the same order as the reference's
    stable sort: ties to the larger index first, NaN last, -0 equal to +0."""
    scores, P = case
    (kd, pd), (kf, pf) = dense.select_tokens(scores, P), fast.select_tokens(scores, P)
    assert torch.equal(kd, kf) and torch.equal(pd, pf), (scores.tolist(), P)


@needs_native
def test_compiled_propagation_checks_its_indices():
    """The compiled propagation refuses kept / prop that are no partition, with the reference's message."""
    x = torch.randn(2, 7, 4)
    G = fast.token_graph(x[:, 1:], (2, 3), "mixed", 2)
    kept, prop = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]), torch.tensor([[4, 5], [4, 4]])
    with pytest.raises(ValueError, match="name image token 4 of image 1 2 times"):
        fast.propagate(x, G, kept, prop, 0.1)
    with pytest.raises(ValueError, match="index 6, outside the n = 6 image tokens"):
        fast.propagate(x, G, kept, torch.tensor([[4, 5], [5, 6]]), 0.1)


@needs_native
def test_propagation_with_gradients_equals_dense():
    """Where gradients are needed the fast propagation takes torch ops: the same values and the
    same gradients as the reference."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 13, 5, dtype=torch.float64, generator=g)
    s = torch.rand(2, 13, dtype=torch.float64, generator=g) + 1
    kept, prop = dense.select_tokens(torch.rand(2, 12, generator=g, dtype=torch.float64), 4)
    grads = []
    for ops in (dense, fast):
        xg, sg = x.clone().requires_grad_(), s.clone().requires_grad_()
        out, _, sizes = ops.propagate(xg, ops.token_graph(x[:, 1:], (3, 4), "mixed", 3), kept, prop, 0.3, sg)
        (out.square().sum() + sizes.square().sum()).backward()
        grads.append((out.detach(), xg.grad, sg.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@needs_native
def test_compiled_selection_and_propagation_compile_into_one_graph():
    """torch.compile sees the compiled selection and propagation as one op each (no graph break)."""
    x = torch.randn(2, 13, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    G = fast.token_graph(x[:, 1:], (3, 4), "mixed", 3)

    def step(x, scores):
        kept, prop = fast.select_tokens(scores, 4)
        return fast.propagate(x, G, kept, prop, 0.3)[0] * 2

    scores = torch.rand(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.compiler.reset()
    with torch.no_grad():
        got = torch.compile(step, fullgraph=True, backend="eager")(x, scores)
    kept, prop = dense.select_tokens(scores, 4)
    want = dense.propagate(x, dense.token_graph(x[:, 1:], (3, 4), "mixed", 3), kept, prop, 0.3)[0] * 2
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cuda_graphed_needs_a_cuda_input():
    with pytest.raises(ValueError, match="CUDA example input"):
        cuda_graphed(lambda x: x, torch.zeros(2))


def cuda_reference(q, k, v, log_s, kth):
    """What ``cuda.attention`` computes, with torch ops on the CPU: the map in float32 (float64)
    from the product rounded to q's dtype, masked below its head's kth smallest entry."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    z = (q.to(acc) @ k.to(acc).transpose(-2, -1)).to(q.dtype).to(acc)  # (B, H, N, N)
    if log_s is not None:
        z = z + log_s.to(acc)[:, None, None, :]
    p = z.softmax(-1)
    tau = None
    if kth:
        B, H, N, _ = p.shape
        tau = p.reshape(B, H, N * N).kthvalue(kth, -1).values
        p = p.masked_fill(p < tau[..., None, None], 0.0)
    out = (p.to(v.dtype).to(acc) @ v.to(acc)).to(v.dtype).transpose(1, 2)  # (B, N, H, d)
    return (out, p.sum(2), p.diagonal(dim1=-2, dim2=-1), p[:, :, 0, :]), tau


def qkv(B, H, N, d, dtype, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # integer-valued q and k: equal rows and exactly equal entries abound
        q, k = (torch.randint(-1, 2, (B, H, N, d), generator=g).double() for _ in range(2))
    else:
        q, k = (torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, N, d, generator=g, dtype=torch.float64)
    log_s = (torch.rand(B, N, generator=g, dtype=torch.float64) + 0.5).log()
    return (q * d**-0.5).to(dtype), k.to(dtype), v.to(dtype), log_s  # q scaled, as the caller passes it


CUDA_CASES = [  # N, d, dtype, token sizes, theta, ties
    (1, 8, torch.float32, False, 0.6, False),  # a map of one entry
    (13, 8, torch.float64, True, 0.6, False),  # one row tile, float64's eight digits
    (70, 16, torch.float32, True, 0.6, False),  # three row tiles, keys in three steps
    (70, 16, torch.float32, False, 1.0, False),  # no sparsity: no threshold
    (37, 16, torch.float32, True, 0.3, True),  # exact ties
    (40, 32, torch.float16, True, 0.6, False),  # autocast's float16 q, k, v
    (150, 64, torch.float32, True, 0.6, False),  # a sample of one entry in 3 (stride > 1)
]
TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def one_entry_buffer(monkeypatch, cuda):
    """The bracket's buffer holds one entry: no head settles by the bracket, the radix selection finds tau."""
    sizes = cuda.sizes
    monkeypatch.setattr(cuda, "sizes", lambda N: (*sizes(N)[:2], 1))


@pytest.mark.triton
@pytest.mark.parametrize("route", ["bracket", "radix"])
@pytest.mark.parametrize("N, d, dtype, sizes, theta, ties", CUDA_CASES)
def test_cuda_attention(monkeypatch, route, N, d, dtype, sizes, theta, ties):
    """cuda.attention's four outputs against the same computation in torch, with the threshold
    found by the sampled bracket, and by the radix selection it falls back to (forced here by a
    buffer of one entry).  A wrong threshold keeps or drops entries of about 1/N, far above these
    tolerances."""
    from gtp_ref.backends.fast import cuda

    if route == "radix":
        one_entry_buffer(monkeypatch, cuda)
    q, k, v, log_s = qkv(2, 3, N, d, dtype, seed=N, ties=ties)
    log_s = log_s if sizes else None
    kth = sparsity_k(N, theta) if theta < 1 else 0
    want, tau = cuda_reference(q, k, v, log_s, kth)
    on = lambda t: None if t is None else t.to(TRITON)
    got = cuda.attention(on(q), on(k), on(v), on(log_s), kth)
    assert got[0].dtype == dtype and got[1].dtype == (
        torch.float64 if dtype == torch.float64 else torch.float32
    )
    for name, a, b in zip(("out", "col_sums", "diagonal", "first_row"), got, want):
        assert torch.allclose(a.cpu().to(b.dtype), b, **TOLERANCE[dtype]), (
            name,
            (a.cpu().to(b.dtype) - b).abs().max(),
        )
    if kth:
        found, settled, _ = cuda.threshold(on(q), on(k), on(log_s), kth)
        assert (settled.cpu() == (1 if route == "bracket" else 0)).all() or N * N <= 1, settled
        assert torch.allclose(found.cpu().view_as(tau), tau, **TOLERANCE[dtype])


@pytest.mark.triton
@pytest.mark.parametrize("cap", [None, 1])
def test_cuda_threshold_is_exact_on_ties(monkeypatch, cap):
    """A map of equal entries (q = 0: every entry 1/N): the kth smallest is that entry, bit for
    bit, found by the bracket and (a buffer of one entry) by the radix selection."""
    from gtp_ref.backends.fast import cuda

    if cap is not None:
        one_entry_buffer(monkeypatch, cuda)
    q, k, _, _ = qkv(1, 2, 24, 16, torch.float32, seed=0)
    q = torch.zeros_like(q)
    want = (q @ k.transpose(-2, -1)).softmax(-1).reshape(2, -1).kthvalue(100, -1).values
    tau, settled, _ = cuda.threshold(q.to(TRITON), k.to(TRITON), None, 100)
    assert torch.equal(tau.cpu(), want) and (settled.cpu() == (0 if cap == 1 else 1)).all(), (
        tau,
        want,
        settled,
    )


@pytest.mark.triton
def test_every_attention_path_agrees_with_the_explicit_one():
    """``python -m gtp_ref.apps.bench attention``'s methods, small: the kernel path's output and
    scores are the explicit path's (DeiT-S's block: C = 384, six heads)."""
    import argparse

    from gtp_ref.apps.bench import attention

    rows = attention.run(
        argparse.Namespace(device=TRITON, sizes=[(2, 23)], dtypes=["fp32"], repeats=1, sparsity=0.6)
    )
    assert [r["method"] for r in rows] == ["sdpa", "explicit", "cuda"]
    assert rows[2]["max_abs_diff_out"] < 1e-5 and rows[2]["max_abs_diff_scores"] < 1e-5, rows[2]


PAPER = dict(
    img_size=64,
    patch_size=8,
    num_classes=10,
    embed_dim=32,
    depth=4,
    num_heads=2,
    num_prop=[8, 6, 4, 2],
    graph="mixed",
    num_neighbours=4,
    selection="mixed_attn_max",
    propagation="graph",
    sparsity=0.6,
    alpha=0.1,
    token_scale=True,
)


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
        replay = cuda_graphed(model, x)
        assert torch.equal(replay(x), eager)
        y = images_for(PAPER, 4, seed=7, dtype=torch.float32).cuda()
        assert torch.equal(replay(y).clone(), model(y)), "the graph reads its new input"


TRITON_SELECTIONS = COLUMN_SELECTIONS + ("cls_attn_mean", "cls_attn_max")


@pytest.mark.triton
@given(
    configs(propagation="graph"),
    st.sampled_from(TRITON_SELECTIONS),
    st.booleans(),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_triton_model_equals_dense(cfg, selection, ties, dtype):
    """The whole model on the Triton path (one kernel per image and head at these sizes), on the
    GPU or in Triton's interpreter, against the dense reference on the CPU in the same dtype,
    barring decisions within rounding of a tie."""
    assume(cfg["class_token"] or not selection.startswith("cls_attn"))
    cfg = {**cfg, "selection": selection}
    x = images_for(cfg, 2, ties=ties, dtype=dtype)
    model = build({**cfg, "backend": "fast"}, dtype=dtype).to(TRITON)
    with torch.no_grad():
        assert path_taken(model, x.to(TRITON), selection) is not None, "the Triton path is taken"
        trace = build(cfg, dtype=dtype).forward_trace(x, record=True)
        got = model(x.to(TRITON)).cpu()
    assume(margin(trace) > NEAR_TIE[dtype])
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5)  # as test_models_agree
    assert torch.allclose(got, trace.logits, rtol=rtol, atol=atol), (TRITON, dtype, cfg)


@pytest.mark.triton
def test_triton_model_above_256_tokens_equals_dense():
    """Above 256 tokens (here 257: a 16 x 16 grid and [CLS]; the sample one entry in 9), against
    the dense reference, in float64 (with 256 tokens float32's closest decisions fall within its
    rounding; test_every_attention_path_agrees_with_the_explicit_one covers it in float32)."""
    dtype = torch.float64
    cfg = dict(
        img_size=64,
        patch_size=4,
        num_classes=7,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_prop=40,
        graph="mixed",
        num_neighbours=4,
        selection="mixed_attn_max",
        propagation="graph",
        sparsity=0.6,
        alpha=0.1,
        token_scale=True,
    )
    x = images_for(cfg, 2, seed=5, dtype=dtype)  # its closest decision: 3e-8 relative
    model = build({**cfg, "backend": "fast"}, dtype=dtype).to(TRITON)
    with torch.no_grad():
        assert (
            model.embed(x.to(TRITON)).shape[1] == 257
            and path_taken(model, x.to(TRITON), cfg["selection"]) == "cuda"
        ), "the CUDA path is taken"
        trace = build(cfg, dtype=dtype).forward_trace(x, record=True)
        got = model(x.to(TRITON)).cpu()
    assert margin(trace) > NEAR_TIE[dtype]
    assert torch.allclose(got, trace.logits, rtol=1e-7, atol=1e-9)


TRITON_VECTORS = [v for v in official_vectors() if v["config"]["selection"] in TRITON_SELECTIONS]


@pytest.mark.triton
@pytest.mark.parametrize("vector", TRITON_VECTORS, ids=lambda v: v["id"])
def test_triton_path_reproduces_the_authors_vectors(vector):
    """The authors' logits from the fast backend's Triton path.  In Triton's interpreter (slow) the
    first image of each vector: an image's logits do not depend on the others in its batch
    (test_model's batch-independence property)."""
    model, images = model_for(vector, backend="fast")
    want = torch.tensor(vector["logits"], dtype=torch.float64)
    if TRITON == "cpu":
        images, want = images[:1], want[:1]
    model, images = model.to(TRITON), images.to(TRITON)
    cfg = vector["config"]
    with torch.no_grad():
        assert path_taken(model, images, cfg["selection"]) is not None, "the Triton path is taken"
        logits = model(images).cpu()
    assert torch.allclose(logits, want, rtol=1e-6, atol=1e-8)
