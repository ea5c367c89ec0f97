"""A second, independent implementation of GTP's op-level API in plain numpy.

Written from docs/spec.md, not from gtp_ref's code, to show that the conformance suite accepts
another implementation and to give re-implementers a compact starting point:

    GTP_IMPL=examples.numpy_gtp python -m pytest --pyargs gtp_ref.conformance

Inputs arrive as CPU torch tensors (or arrays); they are copied into numpy.  Outputs are
numpy arrays.  The graph is a dense numpy array [B, n, n].  Not part of the package's runtime.
"""

import numpy as np

GRAPHS = ("spatial", "semantic", "mixed")
SELECTIONS = (
    "cls_attn_mean",
    "cls_attn_max",
    "img_attn_mean",
    "img_attn_max",
    "diag_attn_mean",
    "diag_attn_max",
    "mixed_attn_mean",
    "mixed_attn_max",
    "sum_attn_max",
    "cos_sim_mean",
    "cos_sim_max",
    "random",
)


def _np(a, dtype=np.float64):
    """A torch tensor or array-like as a numpy array (a copy: the ops never write to inputs)."""
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else a
    return np.array(a, dtype=dtype)


def _unit_rows(x):
    """Rows divided by their L2 norm; a zero row stays zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def token_graph(x_img, grid, graph="mixed", num_neighbours=4):
    x = _np(x_img)
    B, n, _ = x.shape
    h, w = grid
    if graph not in GRAPHS:
        raise ValueError(f"graph={graph!r} is not one of {GRAPHS}")
    if h * w != n:
        raise ValueError(f"grid={grid} does not hold {n} tokens")
    A = np.zeros((B, n, n))
    if graph in ("spatial", "mixed"):
        r, c = np.divmod(np.arange(n), w)
        near = (np.abs(r[:, None] - r[None]) <= 1) & (np.abs(c[:, None] - c[None]) <= 1)
        A[:] = near & ~np.eye(n, dtype=bool)
    if graph in ("semantic", "mixed"):
        M = num_neighbours
        if not 0 <= M <= n - 1:
            raise ValueError(f"num_neighbours={M} must be in [0, {n - 1}]")
        if M > 0:
            u = _unit_rows(x)
            K = u @ u.transpose(0, 2, 1)
            K[:, np.arange(n), np.arange(n)] = -np.inf
            T = -np.partition(-K, M - 1, axis=-1)[..., M - 1 : M]  # M-th largest, O(n) per row
            A = np.maximum(A, (K >= T) & np.isfinite(K))
    deg = A.sum(-1)
    d = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
    return A * d[:, :, None] * d[:, None, :]


def to_dense(G):
    return np.asarray(G)


def sparsify_attention(attn, sparsity):
    a = _np(attn)
    if not 0 < sparsity <= 1:
        raise ValueError(f"sparsity={sparsity} must be in (0, 1]")
    B, H, N, _ = a.shape
    k = int(N * N * (1.0 - sparsity))
    if sparsity < 1 and k >= 1:
        flat = a.reshape(B, H, N * N)
        tau = np.partition(flat, k - 1, axis=-1)[..., k - 1]
        a[a < tau[..., None, None]] = 0.0
    return a


def token_scores(attn, selection, prefix_tokens=True, generator=None):
    a = _np(attn)
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
    if selection.startswith("cls") and not prefix_tokens:
        raise ValueError(f"selection={selection!r} needs a class token")
    c = int(prefix_tokens)
    B, H, N, _ = a.shape
    n = N - c
    if selection == "random":
        seed = None if generator is None else generator.initial_seed()
        return np.random.default_rng(seed).random((B, n))
    agg = np.mean if selection.endswith("mean") else np.max

    def img(f=agg):
        return f(a[:, :, :, c:].sum(axis=2), axis=1)

    def diag(f=agg):
        return f(np.diagonal(a, axis1=2, axis2=3)[:, :, c:], axis=1)

    kind = selection.split("_")[0]
    if kind == "cls":
        return agg(a[:, :, 0, c:], axis=1)
    if kind == "img":
        return img()
    if kind == "diag":
        return diag()
    if kind == "mixed":
        return diag() * img()
    if kind == "sum":
        return diag(np.max) + img(np.max)
    R = _unit_rows(agg(a[:, :, c:, :], axis=1))  # (B, n, N)
    return -(R @ R.transpose(0, 2, 1)).sum(-1)


def select_tokens(scores, num_prop):
    s = _np(scores)
    B, n = s.shape
    if not 0 <= num_prop <= n:
        raise ValueError(f"num_prop={num_prop} must be in [0, {n}]")
    idx = np.arange(n)
    order = np.stack([np.lexsort((-idx, row)) for row in s])  # score up, larger index first on ties
    prop = order[:, :num_prop]
    kept = np.sort(order[:, num_prop:], axis=-1)
    return kept.astype(np.int64), prop.astype(np.int64)


def propagate(x, G, kept, prop, alpha, token_sizes=None, prefix_tokens=True, mode="graph"):
    x = _np(x)
    kept, prop = _np(kept, np.int64), _np(prop, np.int64)
    c = int(prefix_tokens)
    if mode not in ("graph", "mean", "none"):
        raise ValueError(f"mode={mode!r} is not one of graph, mean, none")
    if not np.isfinite(alpha):
        raise ValueError(f"alpha={alpha} must be finite")
    b = np.arange(x.shape[0])[:, None]
    x_K, x_P = x[:, c:][b, kept], x[:, c:][b, prop]
    s = None if token_sizes is None else _np(token_sizes)
    s_K = s_P = None
    if s is not None:
        s_K, s_P = s[:, c:][b, kept], s[:, c:][b, prop]
    G = None if G is None else _np(G)
    G_next = None if G is None else G[b[:, :, None], kept[:, :, None], kept[:, None, :]]
    if mode == "graph":
        A_KP = G[b[:, :, None], kept[:, :, None], prop[:, None, :]]
        x_K = x_K + alpha * A_KP @ x_P
        if s is not None:
            s_K = s_K + alpha * (A_KP @ s_P[..., None])[..., 0]
    elif mode == "mean" and prop.shape[1] > 0:
        x_K = np.concatenate([x_K, x_P.mean(1, keepdims=True)], axis=1)
        if s is not None:
            s_K = np.concatenate([s_K, s_P.sum(1, keepdims=True)], axis=1)
        if G_next is not None:
            G_next = np.pad(G_next, ((0, 0), (0, 1), (0, 1)))
    out = np.concatenate([x[:, :c], x_K], axis=1)
    return out, G_next, None if s is None else np.concatenate([s[:, :c], s_K], axis=1)
