"""Test-session settings: hypothesis profiles and the two hardware markers.

Default profile: fast enough for CI, derandomized there (CI=true) so a green main stays green;
local runs explore new examples.  ``--hypothesis-profile long`` (or HYPOTHESIS_PROFILE=long) for
soak runs.  ``@pytest.mark.cuda``: needs a CUDA device; ``@pytest.mark.triton``: needs the fast
backend's Triton kernels (CUDA with Triton, or Triton's interpreter with TRITON_INTERPRET=1) --
both skip cleanly, with the reason, where that is missing.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
# a GPU run's few, fixed examples (tools/gpu_checks.sh): every kernel variant compiles in the time it has
settings.register_profile(
    "gpu", max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    from tests.helpers import TRITON

    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "triton" in item.keywords and TRITON is None:
            item.add_marker(
                pytest.mark.skip(
                    reason="needs the Triton kernels: CUDA with Triton, or TRITON_INTERPRET=1 "
                    "(tests/backends/test_gpu_checks.py runs them so)"
                )
            )
