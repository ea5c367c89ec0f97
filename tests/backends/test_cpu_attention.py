"""The fast backend's compiled CPU attention (``gtp_ref.backends.fast.cpu.attention_op``): a
block's whole attention per image and head in one call -- q k^T, the softmax, the threshold, the
masking, the column sums / diagonal / first row and Att v.

Its map is its own (its products and exp round differently from torch's in the last bits), so it
is checked three ways: its threshold is exactly the kth smallest of the map it computed (read back
through an identity v, which makes Att v the masked map itself); its outputs equal the same
computation in torch within rounding, barring maps whose threshold falls within rounding of another
entry; and whole models on it equal the dense reference, barring decisions within rounding of a tie
(``gtp_ref.diagnostics.margin``), as the GPU kernels' tests do."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref.backends import fast
from gtp_ref.backends.fast import cpu, cpu_build
from gtp_ref.diagnostics import margin
from gtp_ref.select import COLUMN_SELECTIONS, sparsity_k
from tests.helpers import NEAR_TIE, build, configs, images_for, model_for, official_vectors, tensors


def has_compiler():
    try:
        return bool(cpu_build._compiler())
    except OSError:
        return False


# Without a C compiler there is nothing to test; with one, the kernels must be there (a library
# that fails its self-test is not used, and would otherwise skip every test below silently).
pytestmark = pytest.mark.skipif(
    fast.TRITON_DEVICE == "cpu" or not has_compiler(),
    reason="no C compiler here (or Triton's interpreter holds the CPU path)",
)


def test_the_kernels_are_built_and_pass_their_self_test():
    assert cpu.available(), cpu.REASON


THETAS = [1.0, 0.999, 0.9, 0.6, 0.3, 0.01]
TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def reference(q, k, v, log_s, kth):
    """What attention_op computes, in torch ops: (Att v [B, N, H, d], column sums, diagonal, first
    row, thresholds, the unmasked map)."""
    z = q @ k.transpose(-2, -1)  # (B, H, N, N)
    if log_s is not None:
        z = z + log_s[:, None, None, :]
    p = z.softmax(-1)
    B, H, N, _ = p.shape
    tau = p.reshape(B, H, N * N).kthvalue(kth, -1).values if kth else p.new_full((B, H), float("-inf"))
    m = p.masked_fill(p < tau[..., None, None], 0.0)
    return (m @ v).transpose(1, 2), m.sum(2), m.diagonal(dim1=-2, dim2=-1), m[:, :, 0], tau, p


@st.composite
def heads(draw, max_tokens=130, max_dim=70):
    """q (scaled), k, v [B, H, N, d] as views of one qkv tensor (the model's layout), log s or None,
    kth: maps of one entry to 130 tokens (beyond 90 the threshold comes from a sampled bracket),
    head widths that do and do not fill the kernel's vectors, exact ties or none."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    B, H = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    N = draw(st.one_of(st.integers(1, 12), st.integers(88, max_tokens)))
    d = draw(st.sampled_from([1, 5, 16, 32, 64, max_dim]))
    ties = draw(st.booleans())
    qkv = draw(tensors((B, N, 3, H, d), ties=ties, dtype=dtype, low=-2, high=2)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, d) each, strided
    log_s = (
        draw(tensors((B, N), ties=ties, dtype=dtype, low=0, high=2)).add(1).log()
        if draw(st.booleans())
        else None
    )
    theta = draw(st.sampled_from(THETAS))
    kth = sparsity_k(N, theta) if theta < 1 else 0
    return q * d**-0.5, k, v, log_s, kth


@given(heads())
def test_outputs_are_the_computation_in_torch(case):
    q, k, v, log_s, kth = case
    want = reference(q, k, v, log_s, kth)
    if kth:  # the threshold is one entry, and no other lies within rounding of it: entries that
        # tie in one rounding (here: integer-valued q and k) need not tie in another
        p, tau = want[5], want[4][..., None, None]
        gap = ((p - tau).abs() / tau.abs().clamp_min(1e-300)).masked_fill(p == tau, float("inf"))
        assume(
            gap.numel() == 0
            or ((p == tau).sum((-2, -1)) == 1).all()
            and gap.amin() > 1e3 * torch.finfo(q.dtype).eps
        )
    got = cpu.attention_op(q, k, v, log_s, kth)
    for name, a, b in zip(("Att v", "column sums", "diagonal", "first row", "thresholds"), got, want):
        assert a.dtype == q.dtype and a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.allclose(a, b, **TOLERANCE[q.dtype]), (name, (a - b).abs().max(), q.shape, kth)


@given(st.integers(1, 130), st.sampled_from(THETAS[1:]), st.booleans(), st.integers(0, 2**31 - 1))
def test_threshold_is_exactly_the_kth_smallest_entry_of_its_map(N, theta, ties, seed):
    """With v the identity (d = N), Att v is the masked map: fewer than k entries lie below the
    threshold (zeroed), and at least k lie at or below it -- the threshold's rank, exactly."""
    g = torch.Generator().manual_seed(seed)
    q, k = (
        torch.randint(-1, 2, (1, 2, N, 8), generator=g).float()
        if ties
        else torch.randn(1, 2, N, 8, generator=g)
        for _ in range(2)
    )
    v = torch.eye(N).expand(1, 2, N, N)
    kth = sparsity_k(N, theta)
    assume(kth > 0)
    out, _, _, _, tau = cpu.attention_op(q, k, v, None, kth)
    masked = out.transpose(1, 2)  # (1, 2, N, N): the kernel's own map, masked
    for h in range(2):
        below = int((masked[0, h] == 0).sum())  # the entries set to 0 (a softmax map has no zeros here)
        at = int((masked[0, h] == tau[0, h]).sum())
        assert below < kth <= below + at, (N, theta, ties, h, below, at, kth)


def test_a_map_of_equal_entries():
    """q = 0: every entry of every map is 1/N, the threshold that entry, nothing masked (the
    sampled bracket holds the whole map here, and the exact selection takes over)."""
    q = torch.zeros(2, 3, 120, 16)
    k, v = torch.randn(2, 3, 120, 16), torch.randn(2, 3, 120, 16)
    out, col_sums, diagonal, first_row, tau = cpu.attention_op(q, k, v, None, sparsity_k(120, 0.6))
    assert (tau == torch.tensor(1 / 120)).all() and torch.allclose(col_sums, torch.ones(2, 3, 120))
    assert torch.allclose(out, v.mean(2, keepdim=True).expand(2, 3, 120, 16).transpose(1, 2), atol=1e-6)


def test_nan_in_one_image_stays_in_that_image():
    q, k, v = (torch.randn(2, 2, 100, 8) for _ in range(3))
    q[1, 0, 3, 0] = float("nan")
    out, col_sums, _, _, _ = cpu.attention_op(q, k, v, None, sparsity_k(100, 0.6))
    assert out[0].isfinite().all() and col_sums[0].isfinite().all() and out[1].isnan().any()


def test_gradients_are_those_of_the_torch_computation():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    log_s = torch.rand(2, 9, generator=g, dtype=torch.float64).add(0.5).log().requires_grad_()
    for kth in (0, sparsity_k(9, 0.6)):
        assert torch.autograd.gradcheck(lambda *t: cpu.attention_op(*t, kth)[:4], (q, k, v, log_s))
        assert torch.autograd.gradcheck(lambda a, b, c: cpu.attention_op(a, b, c, None, kth)[:4], (q, k, v))


def test_the_op_compiles_into_one_graph():
    q, k, v = (torch.randn(1, 2, 20, 8) for _ in range(3))
    f = torch.compile(
        lambda a, b, c: cpu.attention_op(a, b, c, None, 100)[0] * 2, fullgraph=True, backend="eager"
    )
    assert torch.equal(f(q, k, v), cpu.attention_op(q, k, v, None, 100)[0] * 2)


@given(
    configs(propagation="graph"),
    st.sampled_from(COLUMN_SELECTIONS + ("cls_attn_mean", "cls_attn_max")),
    st.booleans(),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_models_on_the_kernel_equal_the_dense_reference(cfg, selection, ties, dtype):
    assume(cfg["class_token"] or not selection.startswith("cls_attn"))
    cfg = {**cfg, "selection": selection}
    x = images_for(cfg, 2, ties=ties, dtype=dtype)
    model = build({**cfg, "backend": "fast"}, dtype=dtype)
    with torch.no_grad():
        block = model.blocks[0]
        q, _, _ = block.attn.heads(block.norm1(model.embed(x)))
        assert fast.attention_path(q, selection)[0] == "cpu", "the kernel is taken"
        trace = build(cfg, dtype=dtype).forward_trace(x, record=True)
        got = model(x)
    assume(margin(trace) > NEAR_TIE[dtype])
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5)
    assert torch.allclose(got, trace.logits, rtol=rtol, atol=atol), (dtype, cfg)


@pytest.mark.parametrize(
    "vector",
    [
        v
        for v in official_vectors()
        if v["config"]["selection"] in COLUMN_SELECTIONS + ("cls_attn_mean", "cls_attn_max")
    ],
    ids=lambda v: v["id"],
)
def test_the_authors_vectors_on_the_kernel(vector):
    model, images = model_for(vector, backend="fast")
    with torch.no_grad():
        block = model.blocks[0]
        q, _, _ = block.attn.heads(block.norm1(model.embed(images)))
        assert fast.attention_path(q, vector["config"]["selection"])[0] == "cpu", "the kernel is taken"
        logits = model(images)
    assert torch.allclose(logits, torch.tensor(vector["logits"], dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_the_explicit_path_gives_the_same_model():
    """forward_trace(record=True) takes the explicit path (it keeps the maps): the same logits."""
    cfg = dict(
        img_size=96,
        patch_size=8,
        num_classes=5,
        embed_dim=24,
        depth=2,
        num_heads=3,
        num_prop=[20, 10],
        graph="mixed",
        num_neighbours=3,
        selection="mixed_attn_max",
        propagation="graph",
        sparsity=0.6,
        alpha=0.1,
        token_scale=True,
        backend="fast",
    )
    model, x = build(cfg, dtype=torch.float32), images_for(cfg, 3, dtype=torch.float32)
    with torch.no_grad():
        fused, explicit = model(x), model.forward_trace(x, record=True).logits
    assert torch.allclose(fused, explicit, rtol=1e-5, atol=1e-6)
