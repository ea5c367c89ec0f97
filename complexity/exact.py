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

from collections.abc import Sequence

from complexity._validate import count
from gtp_ref.schedule import image_tokens, prop_schedule, tome_schedule


def g_gtp_exact(
    n: int,
    P: Sequence[int],
    C: int,
    *,
    semantic_graph: bool = True,
    token_scale: bool = False,
    propagation: str = "graph",
    cos_sim_tokens: Sequence[int] | None = None,
) -> int:
    """MACs of GTP's matrix products: n image tokens, P = tokens propagated per layer (a list).

    semantic_graph: whether the cosine-similarity graph is computed (n^2 C);
    token_scale: sizes propagated too; propagation: only "graph" multiplies by Â;
    cos_sim_tokens: for cos_sim_* selection, the total tokens N_l per layer ([CLS] included).
    """
    n, C = int(count("n", n)), int(count("C", C))
    P = prop_schedule(list(P), len(P), n, propagation)
    total = n * n * C if semantic_graph and any(P) and propagation == "graph" else 0
    for l, (p, n_l) in enumerate(zip(P, image_tokens(n, P, propagation))):
        if p > 0 and propagation == "graph":
            total += (n_l - p) * p * (C + int(token_scale))
        if p > 0 and cos_sim_tokens is not None:
            total += n_l * n_l * cos_sim_tokens[l]
    return total


def g_tome_exact(N: int, r: Sequence[int], C: int, H: int, *, class_token: bool = True) -> int:
    """MACs of ToMe's matrix products: N tokens, r merged per layer (a list, clamped as ToMe does)."""
    N, C, H = int(count("N", N)), int(count("C", C)), int(count("H", H))
    if C % H:
        raise ValueError(f"C={C} is not divisible by H={H}")
    total, N_l = 0, N
    for r_l in tome_schedule(list(r), len(r), N, int(class_token)):
        if r_l > 0:
            total += ((N_l + 1) // 2) * (N_l // 2) * (C // H)
        N_l -= r_l
    return total
