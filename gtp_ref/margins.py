"""How close each discrete decision of a forward pass came to going the other way.

GTP makes three kinds of decisions: which attention entries fall below the sparsity threshold,
which similarities reach a row's semantic threshold, and which tokens are selected.  Two
correct implementations can disagree wherever such a decision rests on a difference of a few
ulps, since their rounding differs.  Each function returns the smallest *non-zero* relative gap
at its decision (``inf`` when there is none): exact ties (gap 0) are decided by the spec's
rules, identically everywhere, and are not near ties.
"""
import torch

from gtp_ref.graph import cosine_similarity
from gtp_ref.select import sparsity_k

INF = float("inf")


def smallest_positive(gap):
    gap = gap[gap > 0]
    return gap.min().item() if gap.numel() else INF


def threshold_gap(values, threshold):
    """values [..., m], threshold [..., 1]: threshold - the largest value strictly below it.

    That value is the one a rounding difference could lift to the threshold (or the threshold
    down to it), changing which entries lie below.  inf where nothing lies below.
    """
    below = torch.where(values < threshold, values, torch.full_like(values, -INF)).amax(-1, keepdim=True)
    return torch.where(below > -INF, threshold - below, torch.full_like(below, INF))


def attention_margin(attn, sparsity):
    """Att [B, H, N, N] before sparsity: per head, tau (the k-th smallest entry) minus the
    largest entry below tau -- the entries below tau are the ones zeroed."""
    B, H, N, _ = attn.shape
    k = sparsity_k(N, sparsity)
    if sparsity >= 1.0 or k < 1:
        return INF
    flat = attn.reshape(B, H, N * N)
    tau = flat.kthvalue(k, dim=-1, keepdim=True).values  # (B, H, 1)
    return smallest_positive(threshold_gap(flat, tau) / attn.abs().amax().clamp_min(1e-300))


def semantic_margin(x_img, num_neighbours):
    """x_img [B, n, C]: per row, T_i (the M-th largest off-diagonal similarity) minus the largest
    similarity below T_i -- the nearest non-neighbour."""
    B, n, _ = x_img.shape
    M = num_neighbours
    if M == 0 or M >= n - 1:
        return INF  # no edge, or every other token: nothing to decide
    K = cosine_similarity(x_img).masked_fill(torch.eye(n, dtype=torch.bool, device=x_img.device), -INF)
    T = K.topk(M, dim=-1).values[..., -1:]  # (B, n, 1)
    return smallest_positive(threshold_gap(K, T))


def selection_margin(scores, kept, prop):
    """scores [B, n]: smallest non-zero |s_kept - s_prop| relative to the largest |score| (>= 1)."""
    if kept.shape[1] == 0 or prop.shape[1] == 0:
        return INF
    scale = scores.abs().amax(1).clamp_min(1.0)[:, None, None]  # (B, 1, 1)
    d = (scores.gather(1, kept)[:, :, None] - scores.gather(1, prop)[:, None, :]).abs() / scale
    return smallest_positive(d)
