"""Spec section 3.4: the P lowest scores are propagated; ties propagate the larger index first."""

import torch
from hypothesis import given

from gtp_ref.conformance.harness import assert_equal, call, load_impl
from gtp_ref.conformance.strategies import scores_and_P

impl = load_impl()


@given(scores_and_P())
def test_selection_follows_the_tie_rule(sp):
    scores, P = sp
    kept, prop = impl.select_tokens(scores, P)
    want_kept, want_prop = [], []
    for row in scores.tolist():
        ranked = sorted(range(len(row)), key=lambda j: (row[j], -j))  # lowest first, larger index first
        want_prop.append(ranked[:P])
        want_kept.append(sorted(ranked[P:]))
    what = call("select_tokens", scores=scores, num_prop=P) + f" with scores {scores.tolist()}"
    assert_equal(
        what + ": prop (lowest score first; ties: larger index first)",
        prop,
        torch.tensor(want_prop, dtype=torch.long).view(len(want_prop), P),
        test="test_selection_follows",
    )
    assert_equal(
        what + ": kept (ascending index)",
        kept,
        torch.tensor(want_kept, dtype=torch.long).view(len(want_kept), -1),
        test="test_selection_follows",
    )
