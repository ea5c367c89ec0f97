import os

from hypothesis import HealthCheck, settings

# Default: fast enough for CI, and derandomized there (CI=true) so a green main stays green;
# local runs explore new examples.  `--hypothesis-profile long` (or HYPOTHESIS_PROFILE=long)
# for soak runs.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
