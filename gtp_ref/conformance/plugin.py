"""The pytest plugin of the conformance suite (registered under the ``pytest11`` entry point).

Loaded by every pytest session where gtp-ref is installed, so it does as little as it can: it
adds one prefixed option, ``--gtp-max-examples`` (no collision with another plugin's options),
and only in a session that runs the suite (``gtp_ref.conformance`` or a path inside it on the
command line) it checks the settings -- ``GTP_IMPL``, ``GTP_XFAILS``, ``GTP_MAX_EXAMPLES`` --
(a bad one is a one-line usage error, before anything runs) and adds the report header.  The
rest lives in the suite's ``conftest.py``, which pytest loads only when it collects the suite.
"""

import ast
import os
from pathlib import Path

DEFAULT_MAX_EXAMPLES = 50
SUITE = Path(__file__).parent


def pytest_addoption(parser):
    group = parser.getgroup("gtp-conformance", "GTP conformance suite (gtp_ref.conformance)")
    group.addoption(
        "--gtp-max-examples",
        type=int,
        default=None,
        metavar="N",
        help=f"hypothesis examples per property (default: GTP_MAX_EXAMPLES or {DEFAULT_MAX_EXAMPLES})",
    )


def running_the_suite(config):
    return any(
        "gtp_ref.conformance" in str(a) or os.path.join("gtp_ref", "conformance") in str(a)
        for a in config.invocation_params.args
    )


def pytest_configure(config):
    if not running_the_suite(config):
        return
    import pytest

    config.gtp_max_examples = max_examples(config)
    config.gtp_xfails = read_xfails()
    from gtp_ref.conformance.harness import ImplementationError, load_impl

    try:
        load_impl()
    except ImplementationError as e:
        raise pytest.UsageError(str(e)) from e


def max_examples(config):
    """--gtp-max-examples, else GTP_MAX_EXAMPLES, else 50: a positive int, or a UsageError."""
    import pytest

    n = config.getoption("--gtp-max-examples")
    if n is not None:
        if n < 1:
            raise pytest.UsageError(
                f"--gtp-max-examples {n}: must be a positive integer (examples per property)"
            )
        return n
    raw = os.environ.get("GTP_MAX_EXAMPLES", str(DEFAULT_MAX_EXAMPLES))
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(
            f"GTP_MAX_EXAMPLES={raw!r}: must be a positive integer (examples per property)"
        )
    return n


def suite_tests():
    """{module file name: names of its test functions}, read from the suite's sources."""
    return {
        path.name: {
            node.name
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
        for path in sorted(SUITE.glob("test_*.py"))
    }


def read_xfails():
    """[(line number, test id)] from the file GTP_XFAILS names (empty if unset).  Every id must
    name a test function of the suite (``module.py::test`` or ``module.py::test[params]``)."""
    import pytest

    path = os.environ.get("GTP_XFAILS")
    if not path:
        return []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise pytest.UsageError(f"GTP_XFAILS={path!r}: cannot read it ({e.strerror or e})") from None
    tests, entries = suite_tests(), []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#")[0].strip()
        if not entry:
            continue
        module, sep, test = entry.partition("::")
        if not sep or module not in tests:
            raise pytest.UsageError(
                f"GTP_XFAILS={path!r} line {number}: {entry!r} is not a test id of the suite "
                f"(write test_module.py::test_name or test_module.py::test_name[params]; "
                f"modules: {', '.join(tests)})"
            )
        if test.partition("[")[0] not in tests[module]:
            raise pytest.UsageError(
                f"GTP_XFAILS={path!r} line {number}: {entry!r} names no test of the suite "
                f"({module} has {', '.join(sorted(tests[module]))})"
            )
        entries.append((number, entry))
    return entries


def pytest_report_header(config):
    if not running_the_suite(config):
        return None
    import torch

    impl = os.environ.get("GTP_IMPL", "gtp_ref.backends.sparse")
    lines = [
        f"gtp conformance: GTP_IMPL={impl} (oracle: gtp_ref.backends.dense), max_examples="
        f"{config.gtp_max_examples}, torch {torch.__version__}, "
        f"cuda {'available' if torch.cuda.is_available() else 'not available'}"
    ]
    lines += [f"  {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GTP_") and k != "GTP_IMPL"]
    return lines
