"""Argument checks shared by the ops and the model: one message shape everywhere."""
import math

GRAPHS = ("spatial", "semantic", "mixed")
SELECTIONS = ("cls_attn_mean", "cls_attn_max", "img_attn_mean", "img_attn_max",
              "diag_attn_mean", "diag_attn_max", "mixed_attn_mean", "mixed_attn_max",
              "sum_attn_max", "cos_sim_mean", "cos_sim_max", "random")
PROPAGATIONS = ("graph", "mean", "none")
GLOBAL_POOLS = ("token", "avg")
BACKENDS = ("dense", "sparse", "fast")


def choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_sparsity(sparsity):
    if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)
            and 0.0 < sparsity <= 1.0):
        raise ValueError(f"sparsity={sparsity!r} must be a number in (0, 1]")


def check_alpha(alpha):
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise ValueError(f"alpha={alpha!r} must be a finite number")


def check_propagate_args(mode, alpha, G):
    choice("propagation", mode, PROPAGATIONS)
    check_alpha(alpha)
    if mode == "graph" and G is None:
        raise ValueError("propagation='graph' needs the token graph G, got None")


def check_grid(grid, n):
    h, w = grid
    if h < 1 or w < 1 or h * w != n:
        raise ValueError(f"grid={tuple(grid)!r} must have h*w equal to the {n} image tokens")


def check_num_neighbours(num_neighbours, n):
    if isinstance(num_neighbours, bool) or not isinstance(num_neighbours, int) \
            or not 0 <= num_neighbours <= n - 1:
        raise ValueError(f"num_neighbours={num_neighbours!r} must be an integer in [0, {n - 1}] "
                         f"(fewer than the {n} image tokens)")
