"""How close each discrete decision of a recorded forward pass came to going the other way.

GTP decides which attention entries fall below the sparsity threshold, which similarities reach
a row's semantic threshold, and which tokens are selected; ToMe decides which tokens merge and
where.  Two correct implementations can disagree wherever such a decision rests on a difference
of a few ulps, since their rounding differs.  Each margin is the smallest *non-zero* relative
gap at its decision (``inf`` when there is none): exact ties (gap 0) are decided by the spec's
rules, identically everywhere, and are not near ties.

The margins are computed from a trace recorded with ``forward_trace(x, record=True)`` and use
the one implementation of each rule (``select.head_thresholds``, ``graph.semantic_threshold``,
``tome.similarity``); nothing here runs in a forward pass.
"""

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gtp_ref.graph import cosine_similarity, semantic_threshold
from gtp_ref.select import head_thresholds

if TYPE_CHECKING:
    from gtp_ref.model import GTPTrace
    from gtp_ref.tome import ToMeTrace

INF = float("inf")


def smallest_positive(gap: Tensor) -> float:
    gap = gap[gap > 0]
    return gap.min().item() if gap.numel() else INF


def threshold_gap(values: Tensor, threshold: Tensor) -> Tensor:
    """values [..., m], threshold [..., 1]: threshold - the largest value strictly below it.

    That value is the one a rounding difference could lift to the threshold (or the threshold
    down to it), changing which entries lie below.  inf where nothing lies below.
    """
    below = torch.where(values < threshold, values, torch.full_like(values, -INF)).amax(-1, keepdim=True)
    return torch.where(below > -INF, threshold - below, torch.full_like(below, INF))


def attention_margin(attn: Tensor, sparsity: float) -> float:
    """Att [B, H, N, N] before sparsity: per head, tau (the k-th smallest entry) minus the
    largest entry below tau -- the entries below tau are the ones zeroed."""
    tau = head_thresholds(attn, sparsity)  # (B, H) or None: the rule of select.sparsify_attention
    if tau is None:
        return INF
    B, H, N, _ = attn.shape
    gap = threshold_gap(attn.reshape(B, H, N * N), tau[..., None])
    return smallest_positive(gap / attn.abs().amax().clamp_min(1e-300))


def semantic_margin(x_img: Tensor, num_neighbours: int) -> float:
    """x_img [B, n, C]: per row, T_i (the M-th largest off-diagonal similarity) minus the largest
    similarity below T_i -- the nearest non-neighbour."""
    B, n, _ = x_img.shape
    M = num_neighbours
    if M == 0 or M >= n - 1:
        return INF  # no edge, or every other token: nothing to decide
    K = cosine_similarity(x_img).masked_fill(torch.eye(n, dtype=torch.bool, device=x_img.device), -INF)
    return smallest_positive(threshold_gap(K, semantic_threshold(K, M)))


def selection_margin(scores: Tensor, kept: Tensor, prop: Tensor) -> float:
    """scores [B, n]: smallest non-zero |s_kept - s_prop| relative to the largest |score| (>= 1)."""
    if kept.shape[1] == 0 or prop.shape[1] == 0:
        return INF
    scale = scores.abs().amax(1).clamp_min(1.0)[:, None, None]  # (B, 1, 1)
    d = (scores.gather(1, kept)[:, :, None] - scores.gather(1, prop)[:, None, :]).abs() / scale
    return smallest_positive(d)


def gtp_margin(trace: "GTPTrace") -> float:
    """The closest call of a GTP forward pass recorded with ``GTPViT.forward_trace(x, record=True)``."""
    margins = [INF]
    if trace.graph_input is not None and trace.num_neighbours is not None:
        margins.append(semantic_margin(trace.graph_input, trace.num_neighbours))
    for layer in trace.layers:
        if layer.attn_raw is None and trace.sparsity < 1:
            raise ValueError("the trace has no attention maps: record it with forward_trace(x, record=True)")
        if layer.attn_raw is not None:
            margins.append(attention_margin(layer.attn_raw, trace.sparsity))
        if layer.prop is not None:
            margins.append(selection_margin(layer.scores, layer.kept, layer.prop))
    return min(margins)


def matching_margin(metric: Tensor, r: int, class_token: bool) -> float:
    """ToMe's decisions in one block, metric [B, N, d]: best vs second-best B token of every A
    token, the r-th vs (r+1)-th most similar A token, and, without a class token, adjacent
    unmerged A tokens (their score order is the next block's order)."""
    from gtp_ref.tome import similarity

    sim = similarity(metric, class_token)  # (B, |A|, |B|), the rule of tome.bipartite_soft_matching
    ranked = sim.max(dim=-1).values.sort(dim=-1, descending=True).values  # (B, |A|)
    gaps = []
    if sim.shape[-1] > 1:
        top2 = sim.topk(2, dim=-1).values  # (B, |A|, 2)
        gaps.append((top2[..., 0] - top2[..., 1]).flatten())
    if 0 < r < ranked.shape[1]:
        gaps.append(ranked[:, r - 1] - ranked[:, r])
    if not class_token and ranked.shape[1] - r > 1:
        gaps.append((ranked[:, r:-1] - ranked[:, r + 1 :]).flatten())
    gaps = torch.cat(gaps) if gaps else sim.new_empty(0)
    return smallest_positive(gaps[torch.isfinite(gaps)])  # [CLS]'s -inf row is no decision


def tome_margin(trace: "ToMeTrace") -> float:
    """The closest call of a ToMe forward pass recorded with ``ToMeViT.forward_trace(x, record=True)``."""
    if any(m is None for m in trace.metrics):
        raise ValueError("the trace has no matching metrics: record it with forward_trace(x, record=True)")
    return min(
        [matching_margin(m, r, trace.class_token) for m, r in zip(trace.metrics, trace.merged) if r > 0],
        default=INF,
    )


def margin(trace: "GTPTrace | ToMeTrace") -> float:
    """The closest call of a recorded GTP or ToMe forward pass (``gtp_margin`` / ``tome_margin``)."""
    return tome_margin(trace) if hasattr(trace, "metrics") else gtp_margin(trace)


def unreceived(trace: "GTPTrace") -> list[int]:
    """Per block, how many propagated patches no kept token received (over the batch): no kept
    token is their neighbour in Â, so GTP drops their features (the authors' code counts them in
    its ``missing`` debug file) and the restore map sends them to the nearest kept patch.  Needs
    a trace recorded with ``forward_trace(x, record=True)`` of a model with propagation='graph'."""
    prov = trace.provenance
    if prov is None:
        raise ValueError("unreceived needs a trace recorded with forward_trace(x, record=True)")
    if len(prov.edges) != sum(layer.prop is not None for layer in trace.layers):
        raise ValueError("unreceived needs a model with propagation='graph' (the others have no receivers)")
    edges = {int(e["block"]): e for e in prov.edges}
    counts = []
    for l in range(len(trace.layers)):
        propagated = prov.propagated_at == l  # (B, n)
        received = torch.zeros_like(propagated)
        if l in edges:
            received[edges[l]["image"], edges[l]["src"]] = True
        counts.append(int((propagated & ~received).sum()))
    return counts
