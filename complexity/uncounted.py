"""The work the paper's count (Eqs. 2-3) leaves out: no multiply-accumulates, but not free.

Counted in three units, per forward pass of one image, as named steps summed over the layers:
  comparisons  element comparisons (selections, maxima, threshold tests)
  additions    element-wise additions and multiplications that are not part of a matrix product
  bytes        bytes read or written by the step (``bytes_per_element`` per element, fp16: 2)
Selections (the sparsity threshold, the semantic top-M, the ranking) are counted at one
comparison per element inspected, the lower bound of a linear-time selection; a sort costs
``m log2 m`` for m items.

GTP per layer l (N_l tokens, n_l image tokens, H heads, C channels, P_l propagated):
  sparsity threshold   the k-th smallest of each head's N_l^2 entries, then a masking pass:
                       2 H N_l^2 comparisons, 3 H N_l^2 elements moved
  column sums          sum_i Att[h, i, j] for every head and image token: H N_l n_l additions
                       (Eq. 3 counts H N_l for the whole score)
  score                diag and column sums aggregated over heads (max), multiplied: 2 H n_l
                       comparisons, n_l additions
  ranking              the P_l lowest of n_l scores: n_l comparisons, + P_l log2 P_l to order them
  gathers              x_K and x_P read, x_K written, Â[K, K] gathered (the dense reference's
                       (n_l - P_l)^2; the sparse backend moves only its edges)
GTP once per image: the semantic top-M per row (n^2 comparisons + n^2 threshold tests) and the
token norms (n C additions).
ToMe per layer: keys averaged over heads (N_l C additions), normalised (2 N_l d_h), the best
match of each A token (|A| |B| comparisons), A sorted by it (|A| log2 |A|), the size-weighted
merge (3 N_l C additions: weight, scatter-add, divide) and its gathers (3 N_l C elements).
"""

import math
from dataclasses import dataclass

from complexity._validate import count
from gtp_ref.schedule import prop_schedule, tome_schedule


@dataclass(frozen=True)
class Ops:
    comparisons: float = 0
    additions: float = 0
    bytes: float = 0

    def __add__(self, other: "Ops") -> "Ops":
        return Ops(
            self.comparisons + other.comparisons, self.additions + other.additions, self.bytes + other.bytes
        )

    @property
    def element_ops(self) -> float:
        """comparisons + additions: the element operations, for comparison with MACs."""
        return self.comparisons + self.additions


def _log2(m: int) -> float:
    return math.log2(m) if m > 1 else 0.0


def gtp_uncounted(
    N: int,
    L: int,
    P: int,
    C: int,
    H: int,
    *,
    class_token: bool = True,
    sparsity: float = 0.6,
    bytes_per_element: int = 2,
) -> dict[str, Ops]:
    """Named steps -> Ops, summed over L layers removing P tokens each (spec settings)."""
    N, L, P, C, H = (
        int(count(k, v, m)) for k, v, m in (("N", N, 1), ("L", L, 1), ("P", P, 0), ("C", C, 1), ("H", H, 1))
    )
    b, c = bytes_per_element, int(class_token)
    n = N - c
    prop_schedule(P, L, n)
    steps = {"semantic top-M (once)": Ops(comparisons=2 * n * n, additions=n * C, bytes=2 * n * n * b)}
    for name in ("sparsity threshold", "column sums", "score", "ranking", "gathers"):
        steps[name] = Ops()
    for l in range(L):
        N_l, n_l = N - l * P, n - l * P
        if sparsity < 1:
            steps["sparsity threshold"] += Ops(comparisons=2 * H * N_l**2, bytes=3 * H * N_l**2 * b)
        steps["column sums"] += Ops(additions=H * N_l * n_l, bytes=H * N_l * n_l * b)
        steps["score"] += Ops(comparisons=2 * H * n_l, additions=n_l, bytes=2 * H * n_l * b)
        steps["ranking"] += Ops(comparisons=n_l + P * _log2(P), bytes=n_l * b)
        kept = n_l - P
        steps["gathers"] += Ops(bytes=(n_l * C + kept * C + 2 * kept * kept) * b)
    return steps


def tome_uncounted(
    N: int, L: int, r: int, C: int, H: int, *, class_token: bool = True, bytes_per_element: int = 2
) -> dict[str, Ops]:
    """Named steps -> Ops for ToMe merging r tokens per layer (clamped as ToMe does)."""
    N, L, r, C, H = (
        int(count(k, v, m)) for k, v, m in (("N", N, 1), ("L", L, 1), ("r", r, 0), ("C", C, 1), ("H", H, 1))
    )
    b, d = bytes_per_element, C // H
    steps = {name: Ops() for name in ("key average", "normalise", "best match", "sort", "merge")}
    N_l = N
    for r_l in tome_schedule(r, L, N, int(class_token)):
        if r_l > 0:
            A, B = (N_l + 1) // 2, N_l // 2
            steps["key average"] += Ops(additions=N_l * C, bytes=(N_l * C + N_l * d) * b)
            steps["normalise"] += Ops(additions=2 * N_l * d, bytes=2 * N_l * d * b)
            steps["best match"] += Ops(comparisons=A * B, bytes=A * B * b)
            steps["sort"] += Ops(comparisons=A * _log2(A), bytes=A * b)
            steps["merge"] += Ops(additions=3 * N_l * C, bytes=3 * N_l * C * b)
        N_l -= r_l
    return steps


def total(steps: dict[str, Ops]) -> Ops:
    out = Ops()
    for ops in steps.values():
        out = out + ops
    return out
