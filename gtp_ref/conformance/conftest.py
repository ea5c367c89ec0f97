"""pytest configuration of the conformance suite: hypothesis profile, xfails, CUDA marker.

GTP_IMPL          the module under test (default gtp_ref.backends.sparse)
GTP_XFAILS        a file of known deviations: one test id per line ('#' comments), either
                  ``test_module.py::test_name`` (every parameter set of that test) or
                  ``test_module.py::test_name[params]`` (one), exactly as pytest names them.
                  Listed tests are strict xfails: one that passes is reported as a failure, so
                  the list cannot go stale.  A missing file, or a line naming no test of the
                  suite, is a usage error.
GTP_MAX_EXAMPLES / --gtp-max-examples   hypothesis examples per property (default 50)
The settings are checked, and the option and the report header added, by
``gtp_ref.conformance.plugin`` (a pytest11 entry point), since a package's conftest is loaded
too late for options and for clean usage errors.
"""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from gtp_ref.conformance import plugin


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs the implementation on CUDA tensors (skipped without)")
    if not hasattr(config, "gtp_max_examples"):  # collected without the suite on the command line
        config.gtp_max_examples, config.gtp_xfails = plugin.max_examples(config), plugin.read_xfails()
    settings.register_profile(
        "gtp-conformance",
        max_examples=config.gtp_max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    settings.load_profile("gtp-conformance")


def _ids(item):
    """The ids an xfail entry may use for ``item``: module::name[params] and module::function."""
    module = Path(str(item.fspath)).name
    return {f"{module}::{item.name}", f"{module}::{getattr(item, 'originalname', item.name)}"}


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect: entries are matched against the whole suite
def pytest_collection_modifyitems(config, items):
    entries, matched = config.gtp_xfails, set()
    collected = {Path(str(item.fspath)).name for item in items}
    for item in items:
        hit = [entry for _, entry in entries if entry in _ids(item)]
        if hit:
            matched.update(hit)
            item.add_marker(pytest.mark.xfail(reason=f"listed in GTP_XFAILS ({hit[0]})", strict=True))
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
    stale = [
        f"line {number}: {entry!r}"
        for number, entry in entries
        if entry not in matched and entry.partition("::")[0] in collected
    ]
    if stale:  # a parameter set that does not exist (the function names were checked at start-up)
        pytest.exit(f"GTP_XFAILS names no test of the suite: {'; '.join(stale)}", returncode=4)
