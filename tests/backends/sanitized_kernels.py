"""The child of tests/backends/test_sanitizers.py: the fast backend's compiled CPU kernels, built with
AddressSanitizer and UBSan (the library's path in argv[1]), driven by hypothesis through every
entry point -- the op-level API and the custom ops -- with valid and malformed shapes, ranks,
indices and values, argv[2] examples per entry point.  Valid calls must give the reference's values,
malformed ones a ValueError / TypeError; any out-of-bounds access or undefined behaviour stops
the process with the sanitizer's report.  Run under LD_PRELOAD=libasan.so (the test sets it up).
"""

import sys

sys.modules["triton"] = (
    None  # Triton's own C++ does not load beside the ASan runtime; the CPU path needs none
)

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gtp_ref.backends import dense, fast  # noqa: E402
from gtp_ref.backends.fast import cpu, cpu_build  # noqa: E402

cpu._LIB = cpu_build._checked(cpu_build.Path(sys.argv[1]))  # the sanitized build, self-tested
assert fast.TRITON_DEVICE is None and cpu.available()
REFUSED = (ValueError, TypeError)
CASES = {"valid": 0, "refused": 0}
examples = settings(
    max_examples=int(sys.argv[2]) if sys.argv[2].isdigit() else 1,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def values(draw, shape, dtype):
    """Random values, often with ties, now and then a NaN / inf / -0."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=dtype)
    if draw(st.booleans()):
        x = (x * 2).round() / 2  # ties
    if x.numel() and draw(st.integers(0, 9)) == 0:
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), -0.0])
        )
    return x


def outcome(call):
    """'ok' for a call that returned, 'refused' for the library's ValueError / TypeError."""
    try:
        result = call()
    except REFUSED:
        CASES["refused"] += 1
        return "refused", None
    CASES["valid"] += 1
    return "ok", result


@st.composite
def attention_args(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    B, H, N = (
        draw(st.integers(0, 2)),
        draw(st.integers(0, 3)),
        draw(st.sampled_from([0, 1, 2, 5, 17, 40, 70, 90])),
    )
    d, dv = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    q, k, v = (values(draw, (B, H, N, w), dtype) for w in (d, d, dv))
    if draw(st.booleans()):  # other strides: heads and tokens swapped in memory
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    sizes = None if draw(st.booleans()) else values(draw, (B, N), dtype).abs() + 0.5
    malformed = draw(st.integers(0, 5))
    if malformed == 1 and N:
        k = k[:, :, : N - 1]
    elif malformed == 2:
        v = v.float() if dtype == torch.float64 else v.double()
    elif malformed == 3 and sizes is not None:
        sizes = sizes[:, :-1] if N else sizes.neg()
    elif malformed == 4 and sizes is not None and sizes.numel():
        sizes.view(-1)[0] = draw(st.sampled_from([-1.0, 0.0, float("nan"), float("inf")]))
    bias = None
    if draw(st.booleans()):  # a relative-position bias, one for all images or one each, in the map's dtype
        rows = draw(st.sampled_from([1, B]))
        bias = values(draw, (rows, H, N, N), torch.float64 if dtype == torch.float64 else torch.float32)
        if malformed == 5:
            bias = bias[..., : max(N - 1, 0)] if N else bias[None]
    theta = draw(st.sampled_from([1.0, 0.6, 0.3, 1e-9]))
    return (
        q,
        k,
        v,
        sizes,
        theta,
        draw(st.sampled_from(["mixed_attn_max", "cls_attn_mean", None])),
        draw(st.integers(0, 2)),
        bias,
    )


@examples
@given(attention_args())
def test_attention(args):
    q, k, v, sizes, theta, selection, prefix, bias = args
    status, got = outcome(lambda: fast.attention(q, k, v, sizes, theta, selection, prefix, bias))
    finite = bool(torch.isfinite(q).all() and torch.isfinite(k).all())
    if status == "ok" and got is not None and finite:
        from gtp_ref.attention import softmax_map

        p = dense.sparsify_attention(softmax_map(q, k, sizes, bias), theta)
        want = (p.to(v.dtype) @ v).transpose(1, 2).flatten(2)
        assert got[0].shape == want.shape and got[0].dtype == want.dtype
        if q.dtype in (torch.float32, torch.float64):  # the half types' values: test_cpu_attention
            tol = 1e-4 if q.dtype == torch.float32 else 1e-9
            assert torch.allclose(got[0], want, rtol=tol, atol=tol, equal_nan=True)
    kth = q.shape[2] ** 2 // 2 if q.dim() == 4 else 0
    # in or beyond range
    outcome(
        lambda: cpu.attention_op(
            q,
            k,
            v,
            None if sizes is None else sizes.log(),
            kth + (0 if theta == 1.0 else q.shape[2] ** 2),
            bias,
        )
    )


@examples
@given(st.data())
def test_kth_and_masking(data):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    R, L = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 300))
    rows = values(data.draw, (R, L), dtype)
    k = data.draw(st.integers(-1, L + 1))
    status, got = outcome(lambda: fast.kth_smallest(rows, k))
    if status == "ok" and R:
        want = rows.kthvalue(k, -1).values  # the same value (-0 and +0 compare equal), or both NaN
        assert bool(((got == want) | (got.isnan() & want.isnan())).all())
    B, H, N = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)), data.draw(st.integers(0, 12))
    attn = values(data.draw, (B, H, N, N + data.draw(st.sampled_from([0, 0, 0, 1]))), dtype)
    outcome(lambda: cpu.mask_heads(attn, data.draw(st.integers(-1, N * N + 1))))
    theta = data.draw(st.sampled_from([1.0, 0.5, 0.01]))
    status, got = outcome(lambda: fast.sparsify_attention(attn, theta))
    if status == "ok":
        assert torch.equal(got.nan_to_num(), dense.sparsify_attention(attn, theta).nan_to_num())


@examples
@given(st.data())
def test_selection(data):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    B, n = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 200))
    scores = values(data.draw, (B, n), dtype)
    P = data.draw(st.integers(-1, 70))
    status, got = outcome(lambda: fast.select_tokens(scores, P))
    if status == "ok":
        want = dense.select_tokens(scores, P)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    outcome(lambda: cpu.select_tokens(scores, P))


@examples
@given(st.data())
def test_propagation(data):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    B, h, w = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    c, C, n = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 9)), h * w
    x = values(data.draw, (B, c + n, C), dtype)
    G = fast.token_graph(x[:, c:].nan_to_num(), (h, w), "mixed", min(2, n - 1))
    P = data.draw(st.integers(0, n - 1))
    order = (
        torch.stack(
            [
                torch.randperm(n, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
                for _ in range(B)
            ]
        )
        if B
        else torch.zeros(0, n, dtype=torch.long)
    )
    kept, prop = order[:, P:].sort(dim=1).values, order[:, :P]
    sizes = None if data.draw(st.booleans()) else values(data.draw, (B, c + n), dtype).abs() + 1
    ids, A0 = G.rows, G.A0
    malformed = data.draw(st.integers(0, 7))
    if malformed == 1 and kept.numel():
        kept = kept.clone()
        kept.view(-1)[0] = data.draw(st.sampled_from([-1, n, 10**9, -(10**9)]))
    elif malformed == 2:
        ids = ids + data.draw(st.sampled_from([-1, 1, n + 1, 10**7]))
    elif malformed == 3 and B > 1:
        A0 = A0[:1]
    elif malformed == 4 and sizes is not None and sizes.numel():
        sizes.view(-1)[0] = data.draw(st.sampled_from([-1.0, 0.0, float("nan"), float("inf")]))
    elif malformed == 5:
        prop = torch.cat([prop, kept[:, :1]], dim=1)
    alpha = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    status, got = outcome(lambda: fast.propagate(x, fast.LazyGraph(A0, ids), kept, prop, alpha, sizes, c))
    if status == "ok" and malformed == 0:
        want = dense.propagate(x, fast.to_dense(G), kept, prop, alpha, sizes, c)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(got[0], want[0], rtol=tol, atol=tol, equal_nan=True)
    outcome(lambda: cpu.propagate(x, sizes, A0, ids, kept, prop, alpha, c))


def canary() -> None:
    """An over-read the Python checks would have refused, made on purpose through ctypes: the
    sanitizer must stop the process here (the test asserts its report)."""
    import numpy as np

    rows, out = np.zeros(10), np.zeros(2)
    cpu._LIB.kth_smallest_f64(rows.ctypes.data, 2, 30, 7, out.ctypes.data, 1)  # 60 values read from 10
    print("the over-read went unseen")


if __name__ == "__main__":
    if sys.argv[2] == "canary":
        canary()
        sys.exit(0)
    for test in (test_attention, test_kth_and_masking, test_selection, test_propagation):
        test()
    assert CASES["valid"] > 50 and CASES["refused"] > 50, CASES
    print(f"sanitized: {CASES['valid']} valid calls, {CASES['refused']} refused, no finding")
