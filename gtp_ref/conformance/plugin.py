"""The pytest plugin of the conformance suite (registered under the ``pytest11`` entry point).

It only adds ``--max-examples`` and, when the suite is being run, the report header; everything
else lives in the suite's ``conftest.py``.  Other test sessions are unaffected.
"""
import os


def pytest_addoption(parser):
    parser.addoption("--max-examples", type=int, default=None,
                     help="gtp conformance: hypothesis examples per property (default: "
                          "GTP_MAX_EXAMPLES or 50)")


def _running_the_suite(config):
    return any("gtp_ref.conformance" in str(a) or os.path.join("gtp_ref", "conformance") in str(a)
               for a in config.invocation_params.args)


def max_examples(config):
    return config.getoption("--max-examples") or int(os.environ.get("GTP_MAX_EXAMPLES", "50"))


def pytest_report_header(config):
    if not _running_the_suite(config):
        return None
    import torch
    impl = os.environ.get("GTP_IMPL", "gtp_ref.sparse")
    lines = [f"gtp conformance: GTP_IMPL={impl} (oracle: gtp_ref.dense), max_examples="
             f"{max_examples(config)}, torch {torch.__version__}, "
             f"cuda {'available' if torch.cuda.is_available() else 'not available'}"]
    lines += [f"  {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GTP_") and k != "GTP_IMPL"]
    return lines
