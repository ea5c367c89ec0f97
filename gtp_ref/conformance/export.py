"""Language-neutral JSON vectors: ``python -m gtp_ref.conformance export DIR``.

One file per op plus ``model.json``; the schema is in docs/conformance.md.  Every input is
stored in the file (so no numpy is needed to use them) *and* comes from a documented rule:
``rng = numpy.random.default_rng(seed)``, then ``rng.standard_normal(shape)`` for continuous
values or ``rng.integers(low, high + 1, shape)`` for tie-rich ones, in the order the fields are
listed.  Expected outputs come from the dense reference in float64.  Cases whose outcome rests
on a near tie (a decision margin below 1e-9, see gtp_ref.diagnostics) are skipped at generation,
so any correct implementation agrees within rounding.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtp_ref._checks import SELECTIONS
from gtp_ref.backends import dense
from gtp_ref.diagnostics import margin, semantic_margin

FORMAT = "gtp-ref-vectors/v1"
# How closely an implementation must match, per file (test_vectors.py reads it from the header):
# the sparsified map and the selection exactly (values are only zeroed; indices are integers),
# one op to float64 rounding, a whole model (two blocks of float64 arithmetic) a little looser.
TOLERANCE = {
    "token_graph": {"rtol": 1e-9, "atol": 1e-12},
    "sparsify_attention": {"rtol": 0.0, "atol": 0.0},
    "token_scores": {"rtol": 1e-9, "atol": 1e-12},
    "select_tokens": {"rtol": 0.0, "atol": 0.0},
    "propagate": {"rtol": 1e-9, "atol": 1e-12},
    "model": {"rtol": 1e-7, "atol": 1e-9},
}


def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _list(t: Any) -> list:
    return t.tolist() if isinstance(t, torch.Tensor) else np.asarray(t).tolist()


def token_graph_cases() -> list[dict[str, Any]]:
    cases = []
    specs = [
        ((1, 1), "spatial", 0),
        ((1, 7), "mixed", 2),
        ((7, 1), "semantic", 6),
        ((3, 4), "mixed", 0),
        ((3, 4), "semantic", 3),
        ((4, 4), "spatial", 0),
        ((2, 5), "mixed", 9),
        ((5, 3), "mixed", 4),
        ((6, 6), "semantic", 1),
        ((3, 3), "semantic", 0),
    ]
    for seed, (grid, graph, M) in enumerate(specs):
        while True:
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((2, grid[0] * grid[1], 4))
            if graph == "spatial" or semantic_margin(_t(x), M) > 1e-9:
                break
            seed += 1000
        cases.append(
            {
                "seed": seed,
                "rule": "x = standard_normal((2, h*w, 4))",
                "inputs": {"x_img": x.tolist(), "grid": list(grid), "graph": graph, "num_neighbours": M},
                "expected": {"graph_dense": _list(dense.token_graph(_t(x), grid, graph, M))},
            }
        )
    return cases


def sparsify_cases() -> list[dict[str, Any]]:
    cases = []
    for seed, (N, theta, ties) in enumerate(
        [
            (3, 0.95, False),
            (4, 0.5, True),
            (5, 0.6, False),
            (6, 0.3, True),
            (10, 0.9, False),
            (7, 1.0, False),
            (8, 0.6, True),
        ]
    ):
        rng = np.random.default_rng(seed)
        if ties:
            w = rng.integers(0, 4, (2, 2, N, N)).astype(np.float64)
            w[w.sum(-1) == 0] = 1.0
            attn, rule = (
                w / w.sum(-1, keepdims=True),
                "w = integers(0, 4, (2, 2, N, N)); rows of 0 -> 1; w / w.sum(-1)",
            )
        else:
            z = rng.standard_normal((2, 2, N, N))
            attn, rule = (
                np.exp(z) / np.exp(z).sum(-1, keepdims=True),
                "softmax(standard_normal((2, 2, N, N)))",
            )
        cases.append(
            {
                "seed": seed,
                "rule": rule,
                "inputs": {"attn": attn.tolist(), "sparsity": theta},
                "expected": {
                    "attn": _list(dense.sparsify_attention(_t(attn), theta)),
                    "k": int(N * N * (1.0 - theta)),
                },
            }
        )
    return cases


def scores_cases() -> list[dict[str, Any]]:
    cases = []
    seed = 0
    for selection in [s for s in SELECTIONS if s != "random"]:
        for class_token in (True, False):
            if selection.startswith("cls") and not class_token:
                continue
            rng = np.random.default_rng(seed)
            z = rng.standard_normal((2, 3, 6, 6))
            attn = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            cases.append(
                {
                    "seed": seed,
                    "rule": "softmax(standard_normal((2, 3, 6, 6)))",
                    "inputs": {"attn": attn.tolist(), "selection": selection, "class_token": class_token},
                    "expected": {"scores": _list(dense.token_scores(_t(attn), selection, class_token))},
                }
            )
            seed += 1
    return cases


def select_cases() -> list[dict[str, Any]]:
    cases = []
    for seed, (n, P, high) in enumerate(
        [
            (1, 0, 0),
            (1, 1, 0),
            (6, 0, 2),
            (6, 3, 0),
            (6, 6, 1),
            (9, 4, 2),
            (12, 5, 3),
            (12, 11, 1),
            (16, 8, 4),
        ]
    ):
        rng = np.random.default_rng(seed)
        scores = rng.integers(0, high + 1, (2, n)).astype(np.float64)
        kept, prop = dense.select_tokens(_t(scores), P)
        cases.append(
            {
                "seed": seed,
                "rule": f"integers(0, {high + 1}, (2, n)) as float64",
                "inputs": {"scores": scores.tolist(), "num_prop": P},
                "expected": {"kept": kept.tolist(), "prop": prop.tolist()},
            }
        )
    return cases


def propagate_cases() -> list[dict[str, Any]]:
    cases = []
    specs = [
        ("graph", True, True, (3, 3), "mixed", 2, 3),
        ("graph", False, False, (2, 4), "semantic", 0, 2),
        ("graph", True, False, (1, 6), "spatial", 0, 5),
        ("mean", True, True, (3, 3), "mixed", 2, 4),
        ("mean", False, True, (2, 3), "spatial", 0, 1),
        ("none", True, True, (3, 2), "semantic", 3, 2),
        ("graph", True, True, (4, 4), "mixed", 4, 0),
    ]
    for seed, (mode, cls, sizes_on, grid, graph, M, P) in enumerate(specs):
        while True:
            rng = np.random.default_rng(seed)
            n, c = grid[0] * grid[1], int(cls)
            x = rng.standard_normal((2, n + c, 4))
            scores = rng.standard_normal((2, n))
            sizes = rng.integers(1, 4, (2, n + c)).astype(np.float64) if sizes_on else None
            if sizes is not None and cls:
                sizes[:, 0] = 1.0
            if graph == "spatial" or semantic_margin(_t(x[:, c:]), M) > 1e-9:
                break
            seed += 1000
        kept, prop = dense.select_tokens(_t(scores), P)
        G = dense.token_graph(_t(x[:, c:]), grid, graph, M)
        x2, G2, s2 = dense.propagate(
            _t(x), G, kept, prop, 0.25, None if sizes is None else _t(sizes), cls, mode
        )
        cases.append(
            {
                "seed": seed,
                "rule": "x = standard_normal((2, c + n, 4)); scores = standard_normal((2, n)); "
                "sizes = integers(1, 4, (2, c + n)) with [CLS] size 1; kept, prop = select_tokens(scores, "
                "P); "
                "the graph: token_graph(x[:, c:], grid, graph, num_neighbours)",
                "inputs": {
                    "x": x.tolist(),
                    "grid": list(grid),
                    "graph": graph,
                    "num_neighbours": M,
                    "kept": kept.tolist(),
                    "prop": prop.tolist(),
                    "alpha": 0.25,
                    "token_scales": None if sizes is None else sizes.tolist(),
                    "class_token": cls,
                    "mode": mode,
                },
                "expected": {
                    "x": x2.tolist(),
                    "graph_dense": G2.tolist(),
                    "token_scales": None if s2 is None else s2.tolist(),
                },
            }
        )
    return cases


MODEL_SPECS = [
    dict(
        img_size=16,
        num_prop=3,
        graph="mixed",
        num_neighbours=2,
        selection="mixed_attn_max",
        propagation="graph",
        sparsity=0.6,
        alpha=0.1,
        token_scale=True,
    ),
    dict(
        img_size=(12, 20),
        num_prop=[2, 1],
        graph="spatial",
        selection="img_attn_mean",
        propagation="graph",
        sparsity=1.0,
        alpha=0.5,
    ),
    dict(
        img_size=16,
        class_token=False,
        global_pool="avg",
        num_prop=[4, 3],
        graph="semantic",
        num_neighbours=3,
        selection="cos_sim_max",
        propagation="graph",
        sparsity=0.5,
        alpha=0.3,
        token_scale=True,
    ),
    dict(
        img_size=16, num_prop=5, selection="cls_attn_mean", propagation="mean", sparsity=0.7, token_scale=True
    ),
    dict(img_size=16, num_prop=[0, 6], selection="diag_attn_max", propagation="none", sparsity=0.9),
    dict(img_size=16, num_prop=0, sparsity=1.0),
]


def model_cases() -> list[dict[str, Any]]:
    from gtp_ref.conformance.seeded import model_for

    cases = []
    for seed, spec in enumerate(MODEL_SPECS):
        cfg = dict(dict(patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=2, num_heads=2), **spec)
        while True:
            model, images = model_for({"config": cfg, "seed": seed, "batch": 2})
            with torch.no_grad():
                trace = model.forward_trace(images, record=True)
            if margin(trace) > 1e-9:
                break
            seed += 1000
        json_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        cases.append(
            {
                "seed": seed,
                "rule": "weights and images by the rule of gtp_official_visible.json's header "
                "(also stored here)",
                "inputs": {
                    "config": json_cfg,
                    "batch": 2,
                    "images": images.tolist(),
                    "state_dict": {k: v.tolist() for k, v in sorted(model.state_dict().items())},
                },
                "expected": {"logits": trace.logits.tolist(), "tokens_per_layer": trace.tokens_per_layer},
            }
        )
    return cases


OPS = {
    "token_graph": token_graph_cases,
    "sparsify_attention": sparsify_cases,
    "token_scores": scores_cases,
    "select_tokens": select_cases,
    "propagate": propagate_cases,
    "model": model_cases,
}


def paths(out_dir: str | Path) -> list[Path]:
    """The files ``export`` writes into ``out_dir``: one per op."""
    return [Path(out_dir) / f"{op}.json" for op in OPS]


def export(out_dir: str | Path) -> list[Path]:
    """Write one JSON file per op into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for op, make in OPS.items():
        doc = {
            "format": FORMAT,
            "op": op,
            "dtype": "float64",
            "tolerance": TOLERANCE[op],
            "generated_by": "python -m gtp_ref.conformance export DIR (gtp_ref.backends.dense)",
            "cases": make(),
        }
        path = out / f"{op}.json"
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        written.append(path)
    return written
