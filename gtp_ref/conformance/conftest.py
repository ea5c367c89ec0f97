"""pytest configuration of the conformance suite: options, report header, xfails, CUDA marker.

GTP_IMPL        the module under test (default gtp_ref.sparse)
GTP_XFAILS      a file of test ids (one per line, '#' comments) expected to fail: known deviations
GTP_MAX_EXAMPLES / --max-examples   hypothesis examples per property (default 50)
The option and the report header come from ``gtp_ref.conformance.plugin`` (a pytest11 entry
point), since a package's conftest is loaded too late to add options.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs the implementation on CUDA tensors (skipped without)")
    from gtp_ref.conformance.plugin import max_examples
    n = max_examples(config)
    settings.register_profile("gtp-conformance", max_examples=n, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    settings.load_profile("gtp-conformance")
    from gtp_ref.conformance.harness import ImplementationError, load_impl
    try:
        load_impl()
    except ImplementationError as e:
        raise pytest.UsageError(str(e)) from e


def _xfails():
    path = os.environ.get("GTP_XFAILS")
    if not path:
        return []
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def pytest_collection_modifyitems(config, items):
    known = _xfails()
    for item in items:
        reason = next((k for k in known if k in item.nodeid), None)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=f"listed in GTP_XFAILS ({reason})", strict=False))
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
