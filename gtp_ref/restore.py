"""The reduced model's tokens, and their restoring to the full patch grid (docs/spec.md, "Tokens
and dense features").

A reduced model ends with fewer image tokens than patches.  ``Tokens`` holds a point of its forward
pass: the tokens, the patch each one started as, its size, and the restore map R [B, n, n_l] --
row p says which current image tokens patch p's feature is read from, with weights summing to 1.
``Tokens.to_grid`` applies it: the restored features R x_img, as a [B, C, h, w] grid.

R starts as the identity and changes in every block that removes tokens (``gtp_step``,
``merge_step``): a kept token carries its patches on; each removed token hands its patches on to
the tokens that received it --

    graph (GTP)  the kept tokens i with Â[i, j] != 0, weighted by Â[i, j] / sum_i Â[i, j] (the
                 edges the features went along, normalised over the receivers);
    none         (pruning) the same weights of the graph the model would have propagated along;
    mean         the appended mean token, which holds all of them;
    no receiver  (graph / none: no kept token is a neighbour of j) the kept token whose patch is
                 nearest on the patch grid, the lowest index on a tie;
    ToMe         the token it merged into.

so a receiver removed later passes its patches on again: the weights compose through the blocks.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Tokens:
    """The tokens of a (reduced) ViT after a block, and where every patch went.

    tokens: [B, N_l, C], the prefix tokens first (``num_prefix_tokens`` of them), then the image
        tokens in the model's order.
    patches: [B, N_l] long, the patch (0-based, row-major over ``grid``) each token started as;
        -1 for a prefix token and for a ``mean`` token (no patch).
    sizes: [B, N_l], each token's size: GTP's token sizes with ``token_scale`` (else 1), ToMe's
        merged-token counts.
    restore: [B, n, N_l - num_prefix_tokens], the restore map R (module docstring); None where it
        was not asked for.
    """

    tokens: Tensor
    patches: Tensor
    sizes: Tensor
    num_prefix_tokens: int
    grid: tuple[int, int]
    restore: Tensor | None = None

    @property
    def prefix(self) -> Tensor:
        """The prefix tokens, [B, c, C]."""
        return self.tokens[:, : self.num_prefix_tokens]

    @property
    def image(self) -> Tensor:
        """The image tokens, [B, n_l, C]."""
        return self.tokens[:, self.num_prefix_tokens :]

    def restored(self, features: Tensor | None = None) -> Tensor:
        """Per-patch features R f: [B, n, D], f the image tokens' features [B, n_l, D] (default:
        the image tokens themselves)."""
        if self.restore is None:
            raise ValueError(
                "these Tokens have no restore map: ask for it (model.forward_tokens(x, restore=True))"
            )
        f = self.image if features is None else features
        n_l = self.restore.shape[-1]
        if not isinstance(f, Tensor) or f.ndim != 3 or tuple(f.shape[:2]) != (self.restore.shape[0], n_l):
            got = list(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"features must be [B, n_l, D] = [{self.restore.shape[0]}, {n_l}, D], got {got}")
        R = self.restore.to(torch.promote_types(f.dtype, self.restore.dtype))
        return (R @ f.to(R.dtype)).to(f.dtype)  # (B, n, D)

    def to_grid(self, features: Tensor | None = None) -> Tensor:
        """``restored(features)`` on the patch grid: [B, D, h, w] (timm's NCHW)."""
        r = self.restored(features)  # (B, n, D)
        h, w = self.grid
        return r.transpose(1, 2).reshape(r.shape[0], r.shape[2], h, w)


def start(x: Tensor, n: int) -> Tensor:
    """R before the first block, for the tokens x [B, N, C] of n patches: every patch its own
    token, [B, n, n], in x's dtype (at least float32: the weights compose through the blocks)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.eye(n, dtype=dtype, device=x.device).expand(x.shape[0], n, n)


def first_patches(x: Tensor, num_prefix_tokens: int) -> Tensor:
    """The patch each of the tokens x [B, c + n, C] starts as: -1 for the c prefix tokens, then
    0 .. n - 1, [B, c + n]."""
    c, n = num_prefix_tokens, x.shape[1] - num_prefix_tokens
    ids = torch.cat([torch.full((c,), -1), torch.arange(n)]).to(x.device)
    return ids.expand(x.shape[0], c + n)


def nearest_kept(prop_patches: Tensor, kept_patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """For each removed token, the kept token whose patch is nearest on the grid (Euclidean; the
    lowest kept index on a tie): [B, P], [B, n_K] patches -> [B, P] indices into the kept tokens.
    A token without a patch (-1) is never chosen."""
    w = grid[1]
    pr, pc = prop_patches // w, prop_patches % w  # (B, P)
    kr, kc = kept_patches // w, kept_patches % w  # (B, n_K)
    d2 = (pr[:, :, None] - kr[:, None, :]) ** 2 + (pc[:, :, None] - kc[:, None, :]) ** 2  # (B, P, n_K)
    d2 = d2.masked_fill((kept_patches < 0)[:, None, :], torch.iinfo(d2.dtype).max)
    return d2.argmin(dim=-1)  # argmin: the first of equal minima


def receiver_weights(
    A_KP: Tensor, prop_patches: Tensor, kept_patches: Tensor, grid: tuple[int, int]
) -> Tensor:
    """Where each removed token's patches go: Â[K, P] [B, n_K, P] -> W [B, P, n_K], row j the
    column Â[K, j] over its sum; a column of zeros (no receiver) the one-hot of ``nearest_kept``."""
    total = A_KP.sum(dim=1)  # (B, P)
    received = total > 0
    W = (A_KP / torch.where(received, total, torch.ones_like(total))[:, None, :]).transpose(1, 2)
    fallback = torch.nn.functional.one_hot(nearest_kept(prop_patches, kept_patches, grid), A_KP.shape[1]).to(
        W.dtype
    )  # (B, P, n_K)
    return torch.where(received[..., None], W, fallback)


def gtp_step(R: Tensor, kept: Tensor, prop: Tensor, W: Tensor | None) -> Tensor:
    """R [B, n, n_l] through a GTP block that keeps ``kept`` [B, n_K] and removes ``prop`` [B, P]:
    -> [B, n, n_K] with W [B, P, n_K] (graph, none), or [B, n, n_K + 1] with W None (mean: the
    removed tokens' patches go to the appended mean token)."""
    R_K, R_P = _columns(R, kept), _columns(R, prop)  # (B, n, n_K), (B, n, P)
    if W is None:
        return torch.cat([R_K, R_P.sum(dim=-1, keepdim=True)], dim=-1)
    return R_K + R_P @ W.to(R.dtype)


def merge_step(
    where: Tensor, patches: Tensor, unm: Tensor, src: Tensor, dst: Tensor
) -> tuple[Tensor, Tensor]:
    """Through one ToMe merge of N_l tokens (``gtp_ref.tome.Match``: A = 0::2, B = 1::2): ``where``
    [B, n], the token each patch is in, and ``patches`` [B, N_l], the patch each token started as
    -> the same after the merge (the unmerged A tokens, then B, each merged token in its
    destination; a destination keeps its own patch)."""
    B, N = patches.shape
    n_unm, ar = unm.shape[1], torch.arange(B, device=unm.device)[:, None]
    new_a = torch.empty(B, (N + 1) // 2, dtype=where.dtype, device=where.device)  # (B, |A|)
    new_a[ar, unm] = torch.arange(n_unm, device=unm.device).expand_as(unm)
    new_a[ar, src] = n_unm + dst
    new_position = torch.empty(B, N, dtype=where.dtype, device=where.device)  # each token's index after
    new_position[:, 0::2] = new_a
    new_position[:, 1::2] = n_unm + torch.arange(N // 2, device=unm.device)
    merged_patches = torch.cat([patches[:, 0::2].gather(1, unm), patches[:, 1::2]], dim=1)
    return new_position.gather(1, where), merged_patches


def one_hot_map(where: Tensor, num_prefix_tokens: int, num_tokens: int, dtype: torch.dtype) -> Tensor:
    """R of a map that sends each patch to one token: ``where`` [B, n] (token indices, prefix
    included, never a prefix token) -> [B, n, num_tokens - num_prefix_tokens]."""
    image = where - num_prefix_tokens
    return torch.nn.functional.one_hot(image, num_tokens - num_prefix_tokens).to(dtype)


def _columns(R: Tensor, idx: Tensor) -> Tensor:
    """R [B, n, m], idx [B, k] -> R[b, :, idx[b]]: [B, n, k]."""
    return R.gather(2, idx[:, None, :].expand(R.shape[0], R.shape[1], idx.shape[1]))
