"""The project's tests share the conformance suite's strategies."""
from gtp_ref.conformance.strategies import (  # noqa: F401  (re-exported for the tests)
    DTYPES, NEAR_TIE, attention_maps, grids, near_tie, scores_and_P, selections, tensors)
