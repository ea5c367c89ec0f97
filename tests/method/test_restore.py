"""The reduced models' tokens and dense features (``gtp_ref.restore``; docs/spec.md, "Tokens and
dense features"): the restore rule, checked against an independent replay of the provenance,
the same grid from every backend, ToMe's merge map, timm's ``forward_intermediates`` convention,
and the refusals."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from gtp_ref import diagnostics
from gtp_ref.restore import receiver_weights
from tests.helpers import BACKENDS, DTYPES, NEAR_TIE, build, configs, images_for, near_tie, tome_configs


def _deterministic(cfg):
    if cfg["selection"] == "random":
        cfg["selection"] = "img_attn_mean"
    return cfg


def replayed_map(trace, grid):
    """The restore map rebuilt from the provenance alone (record=True, graph propagation), by
    patches instead of token indices: [B, n, n] over the patch each final token started as."""
    prov = trace.provenance
    B, n = prov.propagated_at.shape
    w = grid[1]
    maps = []
    for b in range(B):
        R = torch.eye(n, dtype=torch.float64)  # R[p, q]: patch p's share held by the token of patch q
        for l in range(len(trace.layers)):
            gone = (prov.propagated_at[b] == l).nonzero().flatten().tolist()
            alive = [q for q in range(n) if prov.propagated_at[b, q] == -1 or prov.propagated_at[b, q] > l]
            edges = [e for e in prov.edges if int(e["block"]) == l]
            for q in gone:
                share = torch.zeros(n, dtype=torch.float64)
                if edges:
                    e = edges[0]
                    mine = (e["image"] == b) & (e["src"] == q)
                    share[e["dst"][mine]] = e["weight"][mine].double()
                if share.sum() > 0:
                    share /= share.sum()
                else:  # no receiver: the nearest surviving patch, the lowest on a tie
                    d = [((q // w - k // w) ** 2 + (q % w - k % w) ** 2, k) for k in alive]
                    share[min(d)[1]] = 1.0
                R = R + R[:, q : q + 1] * share[None, :]
                R[:, q] = 0
        maps.append(R)
    return torch.stack(maps)


@given(configs(propagation="graph"), st.booleans())
def test_the_restore_map_is_the_provenance_composed(cfg, ties):
    """GTP: each propagated patch goes to the tokens that received it, by Â's weights over their
    sum (the nearest surviving patch where none did), composed through the blocks."""
    cfg = _deterministic(cfg)
    model = build(cfg)
    x = images_for(cfg, 2, ties=ties)
    with torch.no_grad():
        trace = model.forward_trace(x, record=True)
        tokens = model.forward_tokens(x, restore=True)
    c = tokens.num_prefix_tokens
    final_patches = tokens.patches[:, c:]  # (B, n_L)
    want = replayed_map(trace, model.grid)  # (B, n, n) by patch
    got = torch.zeros_like(want)
    for b in range(want.shape[0]):
        got[b][:, final_patches[b]] = tokens.restore[b].double()
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), cfg


@given(configs(), st.sampled_from(DTYPES), st.booleans())
def test_every_patch_is_restored_from_a_convex_combination(cfg, dtype, ties):
    """Rows of R are weights summing to 1; a patch kept to the end reads exactly its own token."""
    cfg = _deterministic(cfg)
    model = build(cfg, dtype=dtype)
    with torch.no_grad():
        tokens = model.forward_tokens(images_for(cfg, 2, dtype=dtype, ties=ties), restore=True)
    R, c = tokens.restore, tokens.num_prefix_tokens
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (R >= 0).all() and torch.allclose(R.sum(-1), torch.ones_like(R.sum(-1)), atol=tol)
    for b, patches in enumerate(tokens.patches[:, c:]):
        for t, p in enumerate(patches.tolist()):
            if p >= 0:
                assert R[b, p, t] == 1 and R[b, p].count_nonzero() == 1, (cfg, p)
    assert tokens.to_grid().shape == (2, cfg["embed_dim"], *model.grid)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "dense"])
@given(configs(), st.sampled_from(DTYPES), st.booleans())
def test_the_restored_grid_agrees_across_backends(backend, cfg, dtype, ties):
    cfg = _deterministic(cfg)
    x = images_for(cfg, 2, dtype=dtype, ties=ties)
    dense, other = build(cfg, dtype=dtype), build({**cfg, "backend": backend}, dtype=dtype)
    with torch.no_grad():
        assume(
            not near_tie(
                dense.forward_trace(x, record=True), other.forward_trace(x, record=True), tol=NEAR_TIE[dtype]
            )
        )
        a, b = dense.forward_tokens(x, restore=True), other.forward_tokens(x, restore=True)
        grids = dense.forward_dense(x), other.forward_dense(x)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert torch.equal(a.patches, b.patches), cfg
    assert torch.allclose(a.restore, b.restore, **tol) and torch.allclose(a.sizes, b.sizes, **tol), cfg
    assert torch.allclose(*grids, **tol), cfg


@given(configs(), st.booleans())
def test_the_restored_grid_is_batch_independent(cfg, ties):
    cfg = _deterministic(cfg)
    model = build(cfg)
    x = images_for(cfg, 3, ties=ties)
    with torch.no_grad():
        traces = [model.forward_trace(x[i : i + 1], record=True) for i in range(3)]
        assume(not near_tie(model.forward_trace(x, record=True), *traces))
        together = model.forward_dense(x)
        alone = torch.cat([model.forward_dense(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, rtol=1e-9, atol=1e-12), cfg


@given(configs(), st.booleans())
def test_without_reduction_the_grid_is_the_image_tokens(cfg, ties):
    cfg = _deterministic({**cfg, "num_prop": 0})
    model = build(cfg)
    x = images_for(cfg, 2, ties=ties)
    with torch.no_grad():
        tokens = model.forward_tokens(x, restore=True)
        features = model.forward_features(x)
    h, w = model.grid
    c = model.num_prefix_tokens
    assert torch.equal(tokens.tokens, features) and features.shape[1] == c + h * w
    assert torch.equal(tokens.restore[0], torch.eye(h * w, dtype=tokens.restore.dtype))
    assert torch.equal(tokens.to_grid(), features[:, c:].transpose(1, 2).reshape(2, -1, h, w))
    assert (tokens.patches[:, :c] == -1).all() and torch.equal(tokens.patches[0, c:], torch.arange(h * w))


@given(tome_configs(), st.booleans())
def test_tome_restores_each_patch_from_the_token_it_merged_into(cfg, ties):
    model = build(cfg)
    x = images_for(cfg, 2, ties=ties)
    with torch.no_grad():
        tokens = model.forward_tokens(x, restore=True)
        trace = model.forward_trace(x)
    R, c = tokens.restore, tokens.num_prefix_tokens
    assert torch.equal(R.sum(-1), torch.ones_like(R.sum(-1))) and R.count_nonzero() == R.shape[0] * R.shape[1]
    # a token's size is the number of patches it holds; a patch it started as is among them
    assert torch.equal(R.sum(1), tokens.sizes[:, c:].to(R.dtype)) and torch.equal(
        tokens.sizes, trace.token_sizes
    )
    for b, patches in enumerate(tokens.patches[:, c:]):
        assert all(R[b, p, t] == 1 for t, p in enumerate(patches.tolist())), cfg
    assert torch.equal(tokens.tokens, model.forward_features(x))


def test_an_unreceived_token_goes_to_the_nearest_kept_patch():
    """On a 3 x 3 grid: patch 0 has no receiver; kept 2 (distance 2), 6 (distance 2) and 8: the
    tie goes to the lowest index; patch 4 goes to its receivers by weight."""
    A_KP = torch.tensor([[[0.0, 0.2], [0.0, 0.0], [0.0, 0.6]]])  # (1, kept 2 6 8, prop 0 4)
    W = receiver_weights(A_KP, torch.tensor([[0, 4]]), torch.tensor([[2, 6, 8]]), (3, 3))
    assert torch.equal(W, torch.tensor([[[1.0, 0.0, 0.0], [0.25, 0.0, 0.75]]]))


@given(configs(propagation="graph", graph="spatial"), st.booleans())
def test_unreceived_counts_the_propagated_patches_no_kept_neighbour_received(cfg, ties):
    """With the spatial graph, a propagated patch has a receiver iff a patch kept in that block is
    one of its 8 neighbours."""
    cfg = _deterministic(cfg)
    model = build(cfg)
    with torch.no_grad():
        trace = model.forward_trace(images_for(cfg, 2, ties=ties), record=True)
    at, w = trace.provenance.propagated_at, model.grid[1]
    want = []
    for l in range(len(trace.layers)):
        count = 0
        for b in range(at.shape[0]):
            alive = [k for k in range(at.shape[1]) if at[b, k] == -1 or at[b, k] > l]
            for q in (at[b] == l).nonzero().flatten().tolist():
                count += not any(abs(q // w - k // w) <= 1 and abs(q % w - k % w) <= 1 for k in alive)
        want.append(count)
    assert diagnostics.unreceived(trace) == want


@pytest.mark.parametrize("propagation, record", [("graph", False), ("mean", True), ("none", True)])
def test_unreceived_needs_a_recorded_graph_propagation(propagation, record):
    model, x = small_model(propagation=propagation)
    with torch.no_grad():
        trace = model.forward_trace(x, record=record)
    with pytest.raises(ValueError, match="record=True" if not record else "propagation='graph'"):
        diagnostics.unreceived(trace)


# ---- timm's forward_intermediates convention on the reduced models ----


def small_model(**settings):
    cfg = dict(
        img_size=(12, 16), patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=3,
        class_token=True, global_pool="token", graph="mixed", num_neighbours=2,
        selection="mixed_attn_max", propagation="graph", sparsity=1.0, alpha=0.1, token_scale=False,
    )  # fmt: skip
    cfg.update(num_prop=[2, 2, 1], **settings)
    return build(cfg), images_for(cfg, 2)


@pytest.mark.parametrize("propagation", ["graph", "mean", "none"])
def test_the_last_intermediate_normed_is_the_dense_output(propagation):
    model, x = small_model(propagation=propagation)
    with torch.no_grad():
        final, (last,) = model.forward_intermediates(x, indices=1, norm=True)
        dense, features = model.forward_dense(x), model.forward_features(x)
        nlc = model.forward_intermediates(
            x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True
        )
    assert torch.equal(final, features) and torch.equal(last, dense)
    assert torch.equal(nlc[0], dense.flatten(2).transpose(1, 2))


def test_intermediates_take_timms_indices_and_stop_early():
    model, x = small_model()
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        some = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True, stop_early=True)
        paired = model.forward_intermediates(x, indices=2, return_prefix_tokens=True, intermediates_only=True)
    assert len(full) == 3 and all(t.shape == (2, 8, 3, 4) for t in full)
    assert len(some) == 2 and all(torch.equal(a, b) for a, b in zip(some, full[:2]))
    assert [tuple(p.shape) for _, p in paired] == [(2, 1, 8)] * 2 and torch.equal(paired[1][0], full[2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(indices=0), "indices"),
        (dict(indices=4), "indices"),
        (dict(indices=[3]), "indices"),
        (dict(indices=[-4]), "indices"),
        (dict(indices=[]), "indices"),
        (dict(indices="last"), "indices"),
        (dict(output_fmt="NHWC"), "output_fmt"),
        (dict(norm="yes"), "norm"),
    ],
)
def test_intermediates_refuse_bad_arguments_by_name(kwargs, message):
    model, x = small_model()
    with pytest.raises((ValueError, TypeError), match=message):
        model.forward_intermediates(x, **kwargs)


def test_tokens_without_a_restore_map_or_with_other_features_are_refused():
    model, x = small_model()
    with torch.no_grad():
        plain, restorable = model.forward_tokens(x), model.forward_tokens(x, restore=True)
    with pytest.raises(ValueError, match="restore=True"):
        plain.to_grid()
    with pytest.raises(ValueError, match=r"\[B, n_l, D\]"):
        restorable.to_grid(torch.zeros(2, 3, 5))
    logits_per_token = restorable.to_grid(torch.ones(2, restorable.image.shape[1], 5))
    assert logits_per_token.shape == (2, 5, 3, 4) and torch.allclose(
        logits_per_token, torch.ones_like(logits_per_token)
    )
