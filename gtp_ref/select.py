"""Attention sparsity and token selection (spec section 3, steps 2 and 4), dense reference.

Layout: attn [B, H, N, N] (heads H, all N tokens, the prefix tokens -- [CLS], registers -- first);
scores [B, n] over the n image tokens; indices are 0-based among the image tokens.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from gtp_ref._checks import (
    check_scores_input,
    check_select_input,
    check_sparsity,
    check_square_map,
    prefix_count,
    renamed_keywords,
)
from gtp_ref.graph import cosine_similarity


def sparsity_k(N: int, sparsity: float) -> int:
    """k = int(N^2 (1 - theta)) in double precision, exactly as the authors compute it.

    So N = 10, theta = 0.9 gives 100 * 0.09999999999999998 -> k = 9, not 10.
    """
    return int(N * N * (1.0 - float(sparsity)))


def _kthvalue(rows: Tensor, k: int) -> Tensor:
    return rows.kthvalue(k, dim=-1).values


def head_thresholds(
    attn: Tensor, sparsity: float, kth_smallest: Callable[[Tensor, int], Tensor] = _kthvalue
) -> Tensor | None:
    """tau [B, H]: the k-th smallest of each head's N^2 entries of Att [B, H, N, N], with
    k = int(N^2 (1 - theta)); None for theta = 1 or k = 0 (nothing is zeroed then).

    ``kth_smallest(rows [R, L], k) -> [R]`` finds it (default ``torch.kthvalue``).
    """
    check_square_map(attn)
    sparsity = check_sparsity(sparsity)
    B, H, N, _ = attn.shape
    k = sparsity_k(N, sparsity)
    if sparsity >= 1.0 or k < 1:
        return None
    return kth_smallest(attn.reshape(B * H, N * N), k).view(B, H)


def sparsify_attention(
    attn: Tensor, sparsity: float, kth_smallest: Callable[[Tensor, int], Tensor] = _kthvalue
) -> Tensor:
    """Att [B, H, N, N] -> same shape: entries below the k-th smallest of each head's map set to 0.

    k = int(N^2 (1 - theta)); one threshold tau per image and head over all N^2 entries (not per
    row); entries < tau become 0, no renormalisation.  theta = 1 or k = 0: unchanged.
    """
    tau = head_thresholds(attn, sparsity, kth_smallest)  # (B, H) or None
    if tau is None:
        return attn
    return attn.masked_fill(attn < tau[..., None, None], 0.0)  # (B, H, N, N)


def _over_heads(s: Tensor, how: str) -> Tensor:
    """Aggregate [B, H, n] over heads: mean or max -> [B, n]."""
    return s.mean(dim=1) if how == "mean" else s.amax(dim=1)


def _cos_sim_score(R: Tensor) -> Tensor:
    """-sum_k cos(R_j, R_k) over image tokens k (itself included): R [B, n, N] -> [B, n].

    A zero row (possible after sparsity) has cosine 0 with every row, not NaN.
    """
    return -cosine_similarity(R).sum(dim=-1)  # (B, n)


@renamed_keywords
def token_scores(
    attn: Tensor, selection: str, prefix_tokens: bool | int = True, generator: torch.Generator | None = None
) -> Tensor:
    """Score per image token from Att [B, H, N, N] -> [B, n]; the lowest scores are propagated.

    c = the prefix tokens (prefix_tokens: True = one [CLS] token, False = none, or their number);
    image token j is row / column c + j.  Rows i run over all N tokens, prefix tokens included;
    ``cls_attn_*`` reads the first prefix token's row.  Over heads h (mean or max, by the name's suffix):
        cls_attn_*   Att[h, 0, c+j]                       (needs [CLS])
        img_attn_*   sum_i Att[h, i, c+j]                 (column sums)
        diag_attn_*  Att[h, c+j, c+j]
        mixed_attn_* agg_h diag * agg_h img               (aggregated first: max * max)
        sum_attn_max diag_attn_max + img_attn_max
        cos_sim_*    -sum_k cos(R_j, R_k), R_j = agg_h Att[h, c+j, :]
        random       uniform in [0, 1), from ``generator``
    """
    check_scores_input(attn, selection, prefix_tokens)
    c = prefix_count(prefix_tokens)
    B, H, N, _ = attn.shape
    n = N - c
    img_cols = attn[..., c:]  # (B, H, N, n)
    if selection == "random":
        return torch.rand(B, n, generator=generator, dtype=attn.dtype, device=attn.device)
    how = selection.rsplit("_", 1)[1]
    if selection in COLUMN_SELECTIONS:
        return column_scores(img_cols.sum(dim=2), attn.diagonal(dim1=-2, dim2=-1)[..., c:], selection)
    if selection.startswith("cls_attn"):
        return _over_heads(img_cols[:, :, 0, :], how)  # (B, n)
    R = _over_heads(attn[:, :, c:, :], how)  # (B, n, N): image tokens' rows, all columns
    return _cos_sim_score(R)


# The selections that need only the column sums and the diagonal of the map.
COLUMN_SELECTIONS = (
    "img_attn_mean",
    "img_attn_max",
    "diag_attn_mean",
    "diag_attn_max",
    "mixed_attn_mean",
    "mixed_attn_max",
    "sum_attn_max",
)


def column_scores(col_sums: Tensor, diagonal: Tensor, selection: str) -> Tensor:
    """The scores of COLUMN_SELECTIONS from col_sums [B, H, n] (sum_i Att[h, i, c+j]) and
    diagonal [B, H, n] (Att[h, c+j, c+j]) -> [B, n]; see ``token_scores``."""
    how = selection.rsplit("_", 1)[1]

    def img(how):
        return _over_heads(col_sums, how)  # (B, n): column sums over all rows

    def diag(how):
        return _over_heads(diagonal, how)  # (B, n)

    if selection.startswith("img_attn"):
        return img(how)
    if selection.startswith("diag_attn"):
        return diag(how)
    if selection.startswith("mixed_attn"):
        return diag(how) * img(how)
    if selection == "sum_attn_max":
        return diag("max") + img("max")
    raise ValueError(f"selection={selection!r} is not one of {', '.join(map(repr, COLUMN_SELECTIONS))}")


def select_tokens(scores: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """scores [B, n] -> (kept [B, n - P] ascending, prop [B, P] in propagation order).

    The P = num_prop lowest scores are propagated; on equal scores the token with the larger
    index is propagated first.  prop lists the tokens from the lowest score up.
    """
    num_prop = check_select_input(scores, num_prop)
    B, n = scores.shape
    # Rank by (score ascending, index descending): a stable sort of the reversed scores.
    order = torch.sort(scores.flip(-1), dim=-1, stable=True).indices  # (B, n), reversed positions
    ranked = (n - 1) - order  # (B, n): original indices, first = first to propagate
    prop = ranked[:, :num_prop]  # (B, P)
    kept = ranked[:, num_prop:].sort(dim=-1).values  # (B, n - P)
    return kept, prop
