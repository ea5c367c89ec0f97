"""The committed language-neutral vectors (vectors/*.json), run against the implementation."""

import json

import pytest
import torch

from gtp_ref.conformance.harness import Ops, assert_close, assert_equal, call, load_impl
from gtp_ref.conformance.seeded import VECTORS, flat_model

impl = load_impl()


def load(op):
    return json.loads((VECTORS / f"{op}.json").read_text())


def cases(op):
    return [pytest.param(c, id=f"{op}-{i}") for i, c in enumerate(load(op)["cases"])]


TOL = {
    op: load(op)["tolerance"]
    for op in ("token_graph", "sparsify_attention", "token_scores", "propagate", "model")
}


def t(v):
    return torch.tensor(v, dtype=torch.float64)


@pytest.mark.parametrize("case", cases("token_graph"))
def test_token_graph_vectors(case):
    i = case["inputs"]
    G = impl.to_dense(impl.token_graph(t(i["x_img"]), tuple(i["grid"]), i["graph"], i["num_neighbours"]))
    assert_close(
        call("token_graph", grid=tuple(i["grid"]), graph=i["graph"], num_neighbours=i["num_neighbours"])
        + f" (vector seed {case['seed']})",
        G,
        t(case["expected"]["graph_dense"]),
        **TOL["token_graph"],
        test="test_token_graph_vectors",
    )


@pytest.mark.parametrize("case", cases("sparsify_attention"))
def test_sparsify_vectors(case):
    i = case["inputs"]
    got = impl.sparsify_attention(t(i["attn"]), i["sparsity"])
    assert_close(
        call("sparsify_attention", sparsity=i["sparsity"]) + f" (vector seed {case['seed']}, "
        f"k={case['expected']['k']})",
        got,
        t(case["expected"]["attn"]),
        **TOL["sparsify_attention"],
        test="test_sparsify_vectors",
    )


@pytest.mark.parametrize("case", cases("token_scores"))
def test_scores_vectors(case):
    i = case["inputs"]
    got = impl.token_scores(t(i["attn"]), i["selection"], i["class_token"], None)
    assert_close(
        call("token_scores", selection=i["selection"], class_token=i["class_token"]),
        got,
        t(case["expected"]["scores"]),
        **TOL["token_scores"],
        test="test_scores_vectors",
    )


@pytest.mark.parametrize("case", cases("select_tokens"))
def test_select_vectors(case):
    i = case["inputs"]
    kept, prop = impl.select_tokens(t(i["scores"]), i["num_prop"])
    what = call("select_tokens", num_prop=i["num_prop"]) + f" with scores {i['scores']}"
    B = len(i["scores"])
    assert_equal(
        what + ": kept",
        kept,
        torch.tensor(case["expected"]["kept"], dtype=torch.long).view(B, -1),
        test="test_select_vectors",
    )
    assert_equal(
        what + ": prop",
        prop,
        torch.tensor(case["expected"]["prop"], dtype=torch.long).view(B, -1),
        test="test_select_vectors",
    )


@pytest.mark.parametrize("case", cases("propagate"))
def test_propagate_vectors(case):
    i, e = case["inputs"], case["expected"]
    c = int(i["class_token"])
    x = t(i["x"])
    G = impl.token_graph(x[:, c:], tuple(i["grid"]), i["graph"], i["num_neighbours"])
    s = None if i["token_scales"] is None else t(i["token_scales"])
    B = x.shape[0]
    kept = torch.tensor(i["kept"], dtype=torch.long).view(B, -1)
    prop = torch.tensor(i["prop"], dtype=torch.long).view(B, -1)
    x2, G2, s2 = impl.propagate(x, G, kept, prop, i["alpha"], s, i["class_token"], i["mode"])
    what = call("propagate", mode=i["mode"], class_token=i["class_token"]) + f" (vector seed {case['seed']})"
    assert_close(what + " -> x", x2, t(e["x"]), **TOL["propagate"], test="test_propagate_vectors")
    assert_close(
        what + " -> next graph",
        impl.to_dense(G2),
        t(e["graph_dense"]),
        **TOL["propagate"],
        test="test_propagate_vectors",
    )
    if e["token_scales"] is not None:
        assert_close(
            what + " -> token sizes",
            s2,
            t(e["token_scales"]),
            **TOL["propagate"],
            test="test_propagate_vectors",
        )


@pytest.mark.parametrize("case", cases("model"))
def test_model_vectors(case):
    i = case["inputs"]
    cfg = i["config"]
    model = flat_model(cfg).double().eval()
    model.load_state_dict({k: t(v) for k, v in i["state_dict"].items()}, strict=True)
    model.ops = Ops(impl).backend()
    with torch.no_grad():
        trace = model.forward_trace(t(i["images"]))
    assert trace.tokens_per_layer == case["expected"]["tokens_per_layer"], (
        f"tokens per layer {trace.tokens_per_layer}, expected {case['expected']['tokens_per_layer']} ({cfg})"
    )
    assert_close(
        f"model logits, config {cfg}",
        trace.logits,
        t(case["expected"]["logits"]),
        **TOL["model"],
        test="test_model_vectors",
    )
