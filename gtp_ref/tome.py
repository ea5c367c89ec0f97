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

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from gtp_ref.config import ViTConfig
from gtp_ref.graph import unit_rows
from gtp_ref.restore import Tokens, first_patches, merge_step, one_hot_map
from gtp_ref.schedule import clamp_r, per_block
from gtp_ref.vit import Block, PostNormBlock, ViT


class Match(NamedTuple):
    """One layer's matching; indices into A = x[:, 0::2] and B = x[:, 1::2]."""

    unm: Tensor  # (B, |A| - r) unmerged A tokens: ascending with [CLS], else by score
    src: Tensor  # (B, r) merged A tokens, most similar first
    dst: Tensor  # (B, r) the B token each src merges into


def similarity(metric: Tensor, class_token: bool = True) -> Tensor:
    """The matching's cosine similarities of A = metric[:, 0::2] with B = metric[:, 1::2]:
    metric [B, N, d] -> [B, |A|, |B|]; [CLS] (A's first) gets -inf, so it is never merged."""
    m = unit_rows(metric)  # cosine similarity: normalised keys
    a, b = m[:, 0::2], m[:, 1::2]  # (B, ceil(N/2), d), (B, floor(N/2), d)
    sim = a @ b.transpose(-2, -1)  # (B, |A|, |B|): the matching cost, ceil(N/2) floor(N/2) d MACs
    if class_token:
        sim[:, 0, :] = float("-inf")  # [CLS] is never merged
    return sim


def bipartite_soft_matching(metric: Tensor, r: int, class_token: bool = True) -> Match:
    """metric [B, N, d] -> the Match removing r = clamp_r(r, N) tokens (see the module docstring)."""
    r = clamp_r(r, metric.shape[1], int(class_token))
    B, N = metric.shape[:2]
    if r == 0:  # nothing to merge (also when B would be empty, N = 1)
        unm = torch.arange((N + 1) // 2, device=metric.device).expand(B, -1)
        return Match(unm, unm[:, :0], unm[:, :0])
    score, best = similarity(metric, class_token).max(dim=-1)  # (B, |A|): best match, first on ties
    order = score.argsort(dim=-1, descending=True, stable=True)  # most similar first
    src, unm = order[:, :r], order[:, r:]  # (B, r), (B, |A| - r) by descending score
    if class_token:
        unm = unm.sort(dim=-1).values  # original order: [CLS] stays first
    return Match(unm, src, best.gather(1, src))


def merge_wavg(x: Tensor, size: Tensor, match: Match) -> tuple[Tensor, Tensor]:
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
    """A ToMe forward pass: logits, tokens merged per block, the final token sizes, and (with
    ``record=True``) each block's matching metric, for ``gtp_ref.diagnostics.tome_margin``."""

    logits: Tensor | None = None
    merged: list[int] = field(default_factory=list)  # r actually merged in each block
    token_sizes: Tensor | None = None  # (B, N_final): how many input tokens each one holds
    class_token: bool = True
    metrics: list[Tensor | None] = field(default_factory=list)  # (B, N_l, d) per block (record=True)
    # with forward_blocks: the token each patch is in (B, n), and the patch each token started as (B, N_l)
    where: Tensor | None = None
    patches: Tensor | None = None


class ToMeBlock(Block):
    """A block with ToMe between attention and MLP; the parameters of ``vit.Block``."""

    def forward(
        self,
        x: Tensor,
        r: int,
        trace: ToMeTrace,
        fused_attn: bool = False,  # type: ignore[override]
        record: bool = False,
    ) -> Tensor:
        """x [B, N, C] -> [B, N - r', C], r' = r clamped; trace.token_sizes updated."""
        x_attn, k = self.attn(self.attn_in(x), trace.token_sizes, fused_attn)  # proportional attention
        x = self.attn_add(x, x_attn)
        metric = k.mean(dim=1)  # (B, N, d): the keys averaged over heads
        r = clamp_r(r, x.shape[1], int(trace.class_token))
        if r > 0:
            match = bipartite_soft_matching(metric, r, trace.class_token)
            if trace.where is not None:
                trace.where, trace.patches = merge_step(trace.where, trace.patches, *match)
            x, trace.token_sizes = merge_wavg(x, trace.token_sizes, match)
        trace.merged.append(r)
        trace.metrics.append(metric if record else None)
        return self.mlp_add(x)


class ToMePostNormBlock(PostNormBlock, ToMeBlock):
    """A post-norm block (``vit.PostNormBlock``'s steps) with ToMe between attention and MLP."""


class ToMeViT(ViT):
    """A ViT with ToMe: ``r`` tokens merged per block (an int or one int per block), on the
    backbone of ``config`` (``gtp_ref.config.ViTConfig``; ``stem``: a hybrid ViT's stem module).

    Takes the same state_dict as ``GTPViT`` / the timm model of the same architecture.
    """

    block_classes = {False: ToMeBlock, True: ToMePostNormBlock}

    def __init__(
        self,
        config: ViTConfig,
        *,
        stem: torch.nn.Module | None = None,
        r: int | list[int] = 0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__(config, stem=stem, fused_attn=fused_attn)
        if self.num_prefix_tokens > int(config.prefix.class_token):
            raise ValueError(
                "ToMe with prefix tokens beyond [CLS] (register tokens, a distillation token) is not "
                "supported: the official ToMe protects only the [CLS] token, so it would merge them with "
                "image tokens"
            )
        if config.positions.rope is not None or config.positions.attn_bias:
            raise ValueError(
                "ToMe with rotary position embeddings (rope) or a relative-position bias (attn_bias) is "
                "not supported: a merged token stands for several patches and has no one position"
            )
        self.r = r  # validated by the property

    @property
    def r(self) -> list[int]:
        """Tokens to merge in each block, one int per block (before ToMe's clamp).  Assigning an
        int or a list of one int per block is validated like the constructor's argument."""
        return self._r

    @r.setter
    def r(self, value: int | list[int]) -> None:
        self._r = per_block("r", value, len(self.blocks))

    def forward_trace(self, x: Tensor, record: bool = False) -> ToMeTrace:
        """Logits, tokens merged per block and the final sizes; ``record=True`` keeps the metrics."""
        x = self.embed(x)  # (B, N, C)
        # (B, N)
        trace = ToMeTrace(token_sizes=x.new_ones(x.shape[:2]), class_token=self.config.prefix.class_token)
        for block, r in zip(self.blocks, self.r):
            x = block(x, r, trace, self.fused_attn, record)
        trace.logits = self.forward_head(x, trace.token_sizes)
        return trace

    def forward_blocks(
        self, x: Tensor, *, restore: bool = False, take: Collection[int] = (), stop: int | None = None
    ) -> tuple[Tokens, list[Tokens]]:
        """``ViT.forward_blocks`` with ToMe in every block: each patch is restored from the token it
        was merged into (``gtp_ref.restore.merge_step``)."""
        x = self.embed(x)  # (B, N, C)
        B, c, n = x.shape[0], self.num_prefix_tokens, self.num_image_tokens
        trace = ToMeTrace(token_sizes=x.new_ones(x.shape[:2]), class_token=self.config.prefix.class_token)
        trace.where = (c + torch.arange(n, device=x.device)).expand(B, n)  # (B, n)
        trace.patches = first_patches(x, c)  # (B, N)
        taken = []
        dtype = torch.promote_types(x.dtype, torch.float32)

        def tokens() -> Tokens:
            R = one_hot_map(trace.where, c, x.shape[1], dtype) if restore else None
            return Tokens(x, trace.patches, trace.token_sizes, c, self.grid, R)

        for l, (block, r) in enumerate(zip(self.blocks, self.r)):
            if stop is not None and l > stop:
                break
            x = block(x, r, trace, self.fused_attn)
            if l in take:
                taken.append(tokens())
        return tokens(), taken

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        return self.forward_trace(x).logits
