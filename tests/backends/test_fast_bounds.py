"""The fast backend's compiled entry points refuse malformed input before C sees a pointer: the
op-level API (``attention``, ``kth_smallest``, ``propagate`` with a LazyGraph, ``select_tokens``)
and the registered custom ops alike, with the reference's kind of error -- never an out-of-bounds
read or write, a crash, or garbage out.  tests/backends/test_sanitizers.py drives the same entry points
under AddressSanitizer / UBSan."""

import pytest
import torch

from gtp_ref.backends import dense, fast
from gtp_ref.backends.fast import cpu
from gtp_ref.backends.fast.cpu_build import SELECT_MAX

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"needs the compiled CPU kernels ({cpu.REASON})")

F64 = torch.float64


def qkv(B=2, H=3, N=17, d=8, dtype=F64):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(3))


def lazy(B=1, grid=(2, 3), C=4):
    x = torch.randn(B, 1 + grid[0] * grid[1], C, dtype=F64, generator=torch.Generator().manual_seed(1))
    return x, fast.token_graph(x[:, 1:], grid, "mixed", 2)


KEPT, PROP = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[4, 5]])
q, k, v = qkv()

# (case, a call that must be refused, error, message)
OP_LEVEL = [
    (
        "attention: k of fewer tokens",
        lambda: fast.attention(q, k[:, :, :9].contiguous(), v, None, 0.6, "mixed_attn_max", 1),
        ValueError,
        r"k has shape \[2, 3, 9, 8\], expected \[2, 3, 17, 8\]",
    ),
    (
        "attention: k float32, q float64",
        lambda: fast.attention(q, k.float(), v.float(), None, 0.6, "mixed_attn_max", 1),
        TypeError,
        "k is torch.float32 on cpu, q torch.float64",
    ),
    (
        "attention: token sizes of 7 tokens",
        lambda: fast.attention(q, k, v, torch.ones(2, 7, dtype=F64), 0.6, "mixed_attn_max", 1),
        ValueError,
        r"token_sizes has shape \[2, 7\], expected \[2, 17\]",
    ),
    (
        "attention: a negative token size",
        lambda: fast.attention(q, k, v, -torch.ones(2, 17, dtype=F64), 0.6, "mixed_attn_max", 1),
        ValueError,
        r"token_sizes\[0, 0\] = -1.0: token sizes must be finite and > 0",
    ),
    (
        "attention: an infinite token size (the kernel's own check)",
        lambda: fast.attention(
            q, k, v, torch.full((2, 17), float("inf"), dtype=F64), 0.6, "mixed_attn_max", 1
        ),
        ValueError,
        r"token_sizes\[0, 0\] = inf: token sizes must be finite and > 0",
    ),
    (
        "attention op: a log size of -inf",
        lambda: cpu.attention_op(
            q, k, v, torch.zeros(2, 17, dtype=F64).index_fill(1, torch.tensor([3]), -float("inf")), 10
        ),
        ValueError,
        r"log_s\[0, 3\] = -inf: the log of a token size must be finite",
    ),
    (
        "attention: a bias of 16 keys",
        lambda: fast.attention(q, k, v, None, 0.6, "mixed_attn_max", 1, torch.zeros(1, 3, 17, 16, dtype=F64)),
        ValueError,
        r"bias has shape \[1, 3, 17, 16\], expected \[\*, 3, 17, 17\]",
    ),
    (
        "attention: a bias on another device",
        lambda: fast.attention(
            q, k, v, None, 0.6, "mixed_attn_max", 1, torch.zeros(1, 3, 17, 17, device="meta")
        ),
        TypeError,
        "bias is on meta, q on cpu",
    ),
    (
        "attention op: a bias of 3 images for 2",
        lambda: cpu.attention_op(q, k, v, None, 10, torch.zeros(3, 3, 17, 17, dtype=F64)),
        ValueError,
        r"its first dimension must be 1 or B = 2",
    ),
    (
        "attention: v of another batch",
        lambda: fast.attention(q, k, v[:1], None, 0.6, "mixed_attn_max", 1),
        ValueError,
        r"v has shape \[1, 3, 17, 8\], expected \[2, 3, 17, \*\]",
    ),
    (
        "attention: q of three dimensions",
        lambda: fast.attention(q[0], k[0], v[0], None, 0.6, "mixed_attn_max", 1),
        ValueError,
        "q must have 4 dimensions",
    ),
    (
        "attention: more prefix tokens than tokens",
        lambda: fast.attention(q, k, v, None, 0.6, "mixed_attn_max", 18),
        ValueError,
        r"prefix_tokens=18 must be an integer in \[0, 17\]",
    ),
    (
        "attention: [CLS] selection without one",
        lambda: fast.attention(q, k, v, None, 0.6, "cls_attn_max", 0),
        ValueError,
        r"needs a \[CLS\] token",
    ),
    (
        "attention: unknown selection",
        lambda: fast.attention(q, k, v, None, 0.6, "best", 1),
        ValueError,
        "selection='best' is not one of",
    ),
    (
        "attention: theta 0",
        lambda: fast.attention(q, k, v, None, 0.0, "mixed_attn_max", 1),
        ValueError,
        r"sparsity=0.0 must be a finite number in \(0, 1\]",
    ),
    (
        "kth_smallest: k beyond the row",
        lambda: fast.kth_smallest(torch.rand(3, 50, dtype=F64), 51),
        ValueError,
        r"k=51 must be an integer in \[1, 50\]",
    ),
    (
        "kth_smallest: k 0",
        lambda: fast.kth_smallest(torch.rand(3, 50, dtype=F64), 0),
        ValueError,
        r"k=0 must be an integer in \[1, 50\]",
    ),
    ("kth_smallest: k -1", lambda: fast.kth_smallest(torch.rand(3, 50), -1), ValueError, r"k=-1 must be"),
    ("kth_smallest: empty rows", lambda: fast.kth_smallest(torch.rand(3, 0), 1), ValueError, "an empty row"),
    (
        "kth_smallest: one dimension",
        lambda: fast.kth_smallest(torch.rand(50), 1),
        ValueError,
        "rows must have 2 dimensions",
    ),
    (
        "propagate: graph rows beyond A0",
        lambda: fast.propagate(
            lazy()[0], fast.LazyGraph(lazy()[1].A0, lazy()[1].rows + 10**7), KEPT, PROP, 0.1, None, 1
        ),
        ValueError,
        r"G.rows hold row 10000005, outside the 7 rows of G.A0",
    ),
    (
        "propagate: a negative graph row",
        lambda: fast.propagate(
            lazy()[0], fast.LazyGraph(lazy()[1].A0, lazy()[1].rows - 1), KEPT, PROP, 0.1, None, 1, "mean"
        ),
        ValueError,
        "G.rows hold row -1",
    ),
    (
        "propagate: A0 of a smaller batch",
        lambda: fast.propagate(
            lazy(2)[0],
            fast.LazyGraph(lazy(1)[1].A0, lazy(2)[1].rows),
            KEPT.expand(2, 4),
            PROP.expand(2, 2),
            0.1,
            None,
            1,
        ),
        ValueError,
        r"G.A0 has shape \[1, 7, 7\], expected \[2, 7, 7\]",
    ),
    (
        "propagate: rows of floats",
        lambda: fast.propagate(
            lazy()[0], fast.LazyGraph(lazy()[1].A0, lazy()[1].rows.double()), KEPT, PROP, 0.1, None, 1
        ),
        TypeError,
        "G.rows must have an integer dtype",
    ),
]

s4 = torch.rand(1, 1, 5, 5)
x1, G1 = lazy()
CUSTOM_OPS = [
    (
        "mask_heads: a map of 5 x 7",
        lambda: torch.ops.gtp_ref.mask_heads(torch.rand(1, 1, 5, 7), 3),
        ValueError,
        r"attn must be \[B, H, N, N\]",
    ),
    (
        "mask_heads: k beyond N^2",
        lambda: torch.ops.gtp_ref.mask_heads(s4, 26),
        ValueError,
        r"k=26 must be an integer in \[0, 25\]",
    ),
    (
        "mask_heads: a float16 map",
        lambda: torch.ops.gtp_ref.mask_heads(s4.half(), 3),
        TypeError,
        "attn must be a CPU float32 / float64 tensor, got torch.float16",
    ),
    (
        "kth_smallest_rows: k beyond the row",
        lambda: torch.ops.gtp_ref.kth_smallest_rows(torch.rand(2, 9), 10),
        ValueError,
        r"k=10 must be an integer in \[1, 9\]",
    ),
    (
        "select_tokens: P = 0",
        lambda: cpu.select_tokens(torch.rand(2, 5), 0),
        ValueError,
        r"num_prop=0 must be an integer in \[1, 5\]",
    ),
    (
        "select_tokens: P beyond SELECT_MAX",
        lambda: cpu.select_tokens(torch.rand(2, 500), SELECT_MAX + 1),
        ValueError,
        rf"num_prop={SELECT_MAX + 1} must be an integer in \[1, {SELECT_MAX}\]",
    ),
    (
        "select_tokens op: P beyond n",
        lambda: torch.ops.gtp_ref.cpu_select_tokens(torch.rand(2, 5), 6),
        ValueError,
        r"num_prop=6 must be an integer in \[1, 5\]",
    ),
    (
        "propagate: more indices than tokens",
        lambda: cpu.propagate(x1, None, G1.A0, G1.rows, KEPT, torch.tensor([[4, 5, 0]]), 0.1, 1),
        ValueError,
        r"kept \[1, 4\] and prop \[1, 3\] must together hold the n = 6 image tokens",
    ),
    (
        "propagate: a smaller batch's graph",
        lambda: cpu.propagate(
            lazy(2)[0], None, G1.A0, G1.rows.expand(2, 6), KEPT.expand(2, 4), PROP.expand(2, 2), 0.1, 1
        ),
        ValueError,
        r"A0 has shape \[1, 7, 7\], expected \[2, 7, 7\]",
    ),
    (
        "propagate: rows beyond A0",
        lambda: cpu.propagate(x1, None, G1.A0, G1.rows + 7, KEPT, PROP, 0.1, 1),
        ValueError,
        "G.rows hold row 12, outside the 7 rows",
    ),
    (
        "propagate: a duplicate index",
        lambda: cpu.propagate(x1, None, G1.A0, G1.rows, torch.tensor([[0, 1, 2, 2]]), PROP, 0.1, 1),
        ValueError,
        "name image token 2 of image 0 2 times",
    ),
    (
        "propagate: a zero size",
        lambda: cpu.propagate(x1, torch.zeros(1, 7), G1.A0, G1.rows, KEPT, PROP, 0.1, 1),
        ValueError,
        r"token_sizes\[0, 0\] = 0.0: token sizes must be finite and > 0",
    ),
    (
        "propagate op: rows of another length",
        lambda: torch.ops.gtp_ref.cpu_propagate(x1, None, G1.A0, G1.rows[:, :5], KEPT, PROP, 0.1, 1),
        ValueError,
        r"rows has shape \[1, 5\], expected \[1, 6\]",
    ),
    (
        "attention op: k of another width",
        lambda: torch.ops.gtp_ref.cpu_attention(q, k[..., :4].contiguous(), v, None, 10),
        ValueError,
        r"k has shape \[2, 3, 17, 4\], expected \[2, 3, 17, 8\]",
    ),
    (
        "attention op: kth beyond N^2",
        lambda: torch.ops.gtp_ref.cpu_attention(q, k, v, None, 17 * 17 + 1),
        ValueError,
        r"kth=290 must be an integer in \[0, 289\]",
    ),
    (
        "attention op: log s of 7 tokens",
        lambda: torch.ops.gtp_ref.cpu_attention(q, k, v, torch.zeros(2, 7), 10),
        ValueError,
        r"log_s has shape \[2, 7\], expected \[2, 17\]",
    ),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in OP_LEVEL], ids=[c[0] for c in OP_LEVEL])
def test_the_op_level_api_refuses_malformed_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CUSTOM_OPS], ids=[c[0] for c in CUSTOM_OPS])
def test_the_compiled_functions_and_custom_ops_refuse_malformed_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_fake_functions_refuse_what_the_kernels_cannot_take():
    """Under torch.compile the custom ops' shape functions see the arguments first: the same refusal."""
    f = torch.compile(lambda a: torch.ops.gtp_ref.mask_heads(a, 3)[0], fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"attn must be \[B, H, N, N\]"):
        f(torch.rand(1, 1, 5, 7))


def test_a_selection_over_millions_of_tokens_needs_no_stack():
    """The selection's per-image scratch is on the heap: 16 million tokens are no crash (and the
    reference's order: among 16 million float32 draws the lowest values tie, larger index first)."""
    scores = torch.rand(1, 16_000_000, generator=torch.Generator().manual_seed(0))
    kept, prop = fast.select_tokens(scores, 2)
    assert prop[0].tolist() == dense.select_tokens(scores, 2)[1][0].tolist()
    assert kept.shape == (1, 16_000_000 - 2) and bool((kept[0, 1:] > kept[0, :-1]).all())


def test_the_propagation_spreads_a_nan_as_the_reference_does():
    """0 x NaN is NaN: a NaN propagated token reaches every kept token of its image (through its
    zero weights too), as the reference's matrix product gives."""
    x, G = lazy()
    x[0, 1 + 4] = float("nan")
    want = dense.propagate(x, fast.to_dense(G), KEPT, PROP, 0.1)[0]
    got = fast.propagate(x, G, KEPT, PROP, 0.1)[0]
    assert torch.equal(got.isnan(), want.isnan()) and got[0, 1:].isnan().all()
    assert torch.allclose(got.nan_to_num(), want.nan_to_num(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_attention_keeps_at_most_32_mib_of_work_buffer_per_thread(dtype):
    """A small map's work buffer is kept for the next call; a map whose buffer passes 32 MiB (about
    3.25 N^2 entries: N = 1700 in float32, 1200 in float64) has it released at the end of its call
    -- and is still exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every head on this thread, whose buffer work_kept reports
    try:
        small = qkv(1, 1, 100, 8, dtype)
        cpu.attention_op(*small, None, 10)
        assert 0 < cpu.work_kept(dtype) <= 32 << 20
        N = 1700 if dtype == torch.float32 else 1200
        big = qkv(1, 1, N, 8, dtype)
        out, col_sums, _, _, tau = cpu.attention_op(*big, None, N * N // 2)
        assert cpu.work_kept(dtype) == 0, "released at the end of the call"
        p = (big[0] @ big[1].transpose(-2, -1)).softmax(-1)  # the reference's map
        want = (dense.sparsify_attention(p, 0.5) @ big[2]).transpose(1, 2)
        assert torch.allclose(out, want, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-6)
        cpu.attention_op(*small, None, 10)
        assert 0 < cpu.work_kept(dtype) <= 32 << 20
    finally:
        torch.set_num_threads(threads)
