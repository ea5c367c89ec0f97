"""Token schedules: how many tokens each block removes, for GTP and for ToMe (the one home of
both rules, used by the models in ``gtp_ref`` and by the cost model; no torch, no sympy).

GTP: ``num_prop`` is an int (the same P in every block) or one int per block.  Block ``l``
propagates P_l of its n_l image tokens and must keep at least one: P_l <= n_l - 1, with
n_{l+1} = n_l - P_l, plus 1 in ``mean`` propagation when P_l > 0 (the appended mean token).

ToMe: ``r`` is an int or one int per block; block ``l`` merges min(r_l, (N_l - protected) // 2)
tokens, since bipartite matching pairs at most half of the unprotected tokens ([CLS] is
protected), and N_{l+1} = N_l - (merged).
"""

from collections.abc import Sequence

from gtp_ref.validate import choice, integer

PROPAGATIONS = ("graph", "mean", "none")


def per_block(name: str, value: int | Sequence[int], depth: int) -> list[int]:
    """An int, or a list / tuple of ``depth`` ints (each >= 0), as a list of ``depth`` Python ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries; need one per block (depth={depth})")
        return [integer(f"{name}[{l}]", v, minimum=0) for l, v in enumerate(value)]
    return [integer(name, value, minimum=0)] * depth


def prop_schedule(num_prop: int | Sequence[int], depth: int, n: int, propagation: str = "graph") -> list[int]:
    """GTP's P per block for ``n`` image tokens; ValueError if a block would keep no image token."""
    choice("propagation", propagation, PROPAGATIONS)
    schedule = per_block("num_prop", num_prop, depth)
    n_l = n
    for l, P in enumerate(schedule):
        if P > n_l - 1:
            raise ValueError(
                f"num_prop={num_prop!r} propagates {P} of the {n_l} image tokens left at block {l}; "
                f"at most {n_l - 1} (at least one image token must be kept)"
            )
        n_l = n_l - P + (1 if propagation == "mean" and P > 0 else 0)
    return schedule


def image_tokens(n: int, schedule: Sequence[int], propagation: str = "graph") -> list[int]:
    """Image tokens entering each block, and after the last: [n_0, n_1, ..., n_L]."""
    out = [n]
    for P in schedule:
        out.append(out[-1] - P + (1 if propagation == "mean" and P > 0 else 0))
    return out


def clamp_r(r: int, num_tokens: int, protected: int) -> int:
    """ToMe merges at most half of the unprotected tokens: min(r, (N - protected) // 2)."""
    return max(0, min(r, (num_tokens - protected) // 2))


def tome_schedule(r: int | Sequence[int], depth: int, num_tokens: int, protected: int) -> list[int]:
    """Tokens ToMe merges in each block for ``r`` (an int or one int per block), clamped."""
    out, N_l = [], num_tokens
    for r_l in per_block("r", r, depth):
        out.append(clamp_r(r_l, N_l, protected))
        N_l -= out[-1]
    return out
