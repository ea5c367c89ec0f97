"""Exact variants of Eqs. 2-3: the matrix products a real forward pass executes.

These are what ``torch.utils.flop_counter`` counts (2 FLOPs per MAC) in ``gtp_ref``'s dense
GTP and in its ToMe, for any per-layer schedule.  How they differ from the paper's counts:

GTP (Eq. 3: N^2 C + sum_l (H N_l + (N_l - M) M C))
  * the semantic graph is built over the n = N - [CLS] image tokens: n^2 C, not N^2 C, and only
    when a semantic graph is used (graph "semantic"/"mixed" with M_sem > 0);
  * propagation x_K += alpha Â[K, P] x_P is (n_l - P_l) P_l C with image-token counts, plus
    (n_l - P_l) P_l for the token sizes when they are on;
  * the score H N_l is no matrix product (maxima and sums over heads: see ``complexity.uncounted``);
    ``cos_sim_*`` selection does one, R^ R^T: n_l^2 N_l.
ToMe (Eq. 2: sum_l (1/4 N_l^2 C + M C))
  * the matching multiplies the ceil(N_l/2) A keys with the floor(N_l/2) B keys, and ToMe's keys
    are *averaged over heads*: d_h = C / H channels, so ceil(N_l/2) floor(N_l/2) C / H -- the
    paper's 1/4 N_l^2 C is H times too large;
  * r_l is clamped to (N_l - [CLS]) // 2;
  * merging (M C) is a weighted scatter-add, no matrix product.
"""
from complexity._validate import count


def _schedule(name, values):
    return [int(count(name, v, minimum=0)) for v in values]


def g_gtp_exact(n, P, C, *, semantic_graph=True, token_scale=False, propagation="graph",
                cos_sim_tokens=None):
    """MACs of GTP's matrix products: n image tokens, P = tokens propagated per layer (a list).

    semantic_graph: whether the cosine-similarity graph is computed (n^2 C);
    token_scale: sizes propagated too; propagation: only "graph" multiplies by Â;
    cos_sim_tokens: for cos_sim_* selection, the total tokens N_l per layer ([CLS] included).
    """
    n, C = int(count("n", n)), int(count("C", C))
    P = _schedule("P", P)
    total = n * n * C if semantic_graph and any(P) and propagation == "graph" else 0
    n_l = n
    for l, p in enumerate(P):
        if p > n_l - 1:
            raise ValueError(f"P={P} propagates {p} of the {n_l} image tokens left at layer {l}; "
                             f"at most {n_l - 1}")
        if p > 0 and propagation == "graph":
            total += (n_l - p) * p * (C + int(token_scale))
        if p > 0 and cos_sim_tokens is not None:
            total += n_l * n_l * cos_sim_tokens[l]
        n_l -= p - (1 if propagation == "mean" and p > 0 else 0)  # "mean" appends one token
    return total


def g_tome_exact(N, r, C, H, *, class_token=True):
    """MACs of ToMe's matrix products: N tokens, r merged per layer (a list, clamped as ToMe does)."""
    N, C, H = int(count("N", N)), int(count("C", C)), int(count("H", H))
    if C % H:
        raise ValueError(f"C={C} is not divisible by H={H}")
    total, N_l = 0, N
    for r_l in _schedule("r", r):
        r_l = min(r_l, (N_l - int(class_token)) // 2)
        if r_l > 0:
            total += ((N_l + 1) // 2) * (N_l // 2) * (C // H)
        N_l -= r_l
    return total
