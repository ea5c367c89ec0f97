"""ToMe (Token Merging, Bolya et al., ICLR 2023) on the same backbone and weights, for comparison.

Written from the ToMe paper's description.  In every block, between attention and MLP:

1. metric: the keys averaged over heads, k̄ [B, N, d_h] (d_h = C / H), cosine-normalised;
2. bipartite soft matching: alternate the tokens into A = (0, 2, 4, ...) and B = (1, 3, ...);
   each A token's best match is its most similar B token; the r A tokens with the most similar
   best match are merged into it.  [CLS] (token 0, in A) is protected: it is never merged.
   r is clamped to half of the unprotected tokens, (N - protected) // 2;
3. merge: a size-weighted average, x_dst <- (s_dst x_dst + sum s_src x_src) / (s_dst + sum s_src),
   sizes add; the output is the unmerged A tokens, then B (in its order);
4. proportional attention: softmax(q k^T / sqrt(d) + log s) in every later block.

Token order, as the official implementation (facebookresearch/ToMe) has it: with a class token
the unmerged A tokens keep their order ([CLS] first); without one they come in descending order
of their best-match score.  The order decides the next block's alternating split, so it changes
the logits from the second block on; the official vectors (``vectors/tome_official_visible.json``)
pin it down.  Tie rules (the paper leaves them open): a best match ties to the lowest B index;
equally similar A tokens are merged lowest index first (and listed in that order).
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from complexity.schedule import clamp_r, per_block
from gtp_ref.graph import unit_rows
from gtp_ref.margins import smallest_positive
from gtp_ref.vit import ViT


class Match(NamedTuple):
    """One layer's matching; indices into A = x[:, 0::2] and B = x[:, 1::2]."""

    unm: torch.Tensor  # (B, |A| - r) unmerged A tokens: ascending with [CLS], else by score
    src: torch.Tensor  # (B, r) merged A tokens, most similar first
    dst: torch.Tensor  # (B, r) the B token each src merges into
    score: torch.Tensor  # (B, |A|) every A token's best similarity (-inf for [CLS])
    margin: float = float("inf")  # with margins=True: the closest call (see gtp_ref.margins)


def bipartite_soft_matching(metric, r, class_token=True, margins=False):
    """metric [B, N, d] -> Match removing r = clamp_r(r, N) tokens (see the module docstring).

    ``margins=True`` also records the smallest non-zero gap of the decisions: best vs
    second-best B token of an A token, the r-th vs (r+1)-th most similar A token, and, without a
    class token, adjacent unmerged A tokens (their score order is the next block's order).
    """
    r = clamp_r(r, metric.shape[1], int(class_token))
    B, N = metric.shape[:2]
    if r == 0:  # nothing to merge (also when B would be empty, N = 1)
        unm = torch.arange((N + 1) // 2, device=metric.device).expand(B, -1)
        none = unm[:, :0]
        return Match(unm, none, none, metric.new_full(unm.shape, float("-inf")))
    m = unit_rows(metric)  # cosine similarity: normalised keys
    a, b = m[:, 0::2], m[:, 1::2]  # (B, ceil(N/2), d), (B, floor(N/2), d)
    sim = a @ b.transpose(-2, -1)  # (B, |A|, |B|): the matching cost, ceil(N/2) floor(N/2) d MACs
    if class_token:
        sim[:, 0, :] = float("-inf")  # [CLS] is never merged
    score, best = sim.max(dim=-1)  # (B, |A|): best similarity and its B token (first on ties)
    order = score.argsort(dim=-1, descending=True, stable=True)  # most similar first
    src = order[:, :r]
    margin = _matching_margin(sim, score.gather(1, order), r, class_token) if margins else float("inf")
    unm = order[:, r:]  # (B, |A| - r) by descending score
    if class_token:
        unm = unm.sort(dim=-1).values  # original order: [CLS] stays first
    return Match(unm, src, best.gather(1, src), score, margin)


def _matching_margin(sim, ranked, r, class_token):
    gaps = []
    if not class_token and ranked.shape[1] - r > 1:
        gaps.append((ranked[:, r:-1] - ranked[:, r + 1:]).flatten())
    if sim.shape[-1] > 1:
        top2 = sim.topk(2, dim=-1).values  # (B, |A|, 2)
        gaps.append((top2[..., 0] - top2[..., 1]).flatten())
    if 0 < r < ranked.shape[1]:
        gaps.append(ranked[:, r - 1] - ranked[:, r])
    gaps = torch.cat(gaps) if gaps else sim.new_empty(0)
    return smallest_positive(gaps[torch.isfinite(gaps)])  # [CLS]'s -inf row is no decision


def merge_wavg(x, size, match):
    """Size-weighted merge: x [B, N, C], size [B, N] -> ([B, N - r, C], [B, N - r])."""
    xs = x * size[..., None]  # (B, N, C) size-weighted features
    ar = torch.arange(x.shape[0], device=x.device)[:, None]

    def reduce(t):  # t: (B, N, ...) -> unmerged A then B with src added into dst
        a, b = t[:, 0::2], t[:, 1::2]
        b = b.index_put((ar.expand_as(match.dst), match.dst), a[ar, match.src], accumulate=True)
        return torch.cat([a[ar, match.unm], b], dim=1)

    xs, size = reduce(xs), reduce(size)
    return xs / size[..., None], size


@dataclass
class ToMeTrace:
    """A ToMe forward pass: logits, tokens merged per block, the final token sizes."""

    logits: torch.Tensor | None = None
    merged: list = field(default_factory=list)  # r actually merged in each block
    sizes: torch.Tensor | None = None  # (B, N_final): how many input tokens each one holds
    matches: list = field(default_factory=list)  # one Match per block that merged


class ToMeViT(ViT):
    """ViT with ToMe: ``r`` tokens merged per block (an int or one int per block).

    Takes the same state_dict as ``GTPViT`` / timm's VisionTransformer of the same geometry.
    """

    def __init__(self, *args, r=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.r = r  # validated by the property

    @property
    def r(self):
        """Tokens to merge in each block, one int per block (before ToMe's clamp).  Assigning an
        int or a list of one int per block is validated like the constructor's argument."""
        return self._r

    @r.setter
    def r(self, value):
        self._r = per_block("r", value, len(self.blocks))

    def forward_trace(self, x, margins=False):
        x = self.embed(x)  # (B, N, C)
        size = x.new_ones(x.shape[:2])  # (B, N)
        trace = ToMeTrace()
        for block, r in zip(self.blocks, self.r):
            x, a = block.attend(x, size, fused=self.fused_attn)  # proportional attention
            r = clamp_r(r, x.shape[1], int(self.class_token))
            if r > 0:
                match = bipartite_soft_matching(a.k.mean(dim=1), r, self.class_token, margins)  # keys over heads
                x, size = merge_wavg(x, size, match)
                trace.matches.append(match)
            trace.merged.append(r)
            x = block.feed_forward(x)
        trace.sizes, trace.logits = size, self.forward_head(x)
        return trace

    @staticmethod
    def min_margin(trace):
        return min([m.margin for m in trace.matches], default=float("inf"))

    def forward(self, x):
        return self.forward_trace(x).logits
