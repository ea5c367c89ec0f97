"""The public API is typed: every public function and method of the installed modules has
annotations for its parameters and its return (``py.typed`` tells type checkers to read them)."""

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import complexity
import gtp_ref

# The conformance suite's test modules are tests, not API; __main__ modules are command lines.
SKIP = ("gtp_ref.conformance.test_", "gtp_ref.conformance.conftest", "gtp_ref.conformance.plugin")


def public_modules():
    for package in (gtp_ref, complexity):
        yield package.__name__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            name = info.name
            if name.startswith(SKIP) or name.rsplit(".", 1)[-1].startswith("_") or name.endswith("__main__"):
                continue
            yield name


def unannotated(obj, where):
    """'where(param)' for each parameter (bar self / cls) and the return without annotation."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    missing = [
        f"{where}({p.name})"
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if sig.return_annotation is inspect.Signature.empty and not where.endswith("__init__"):
        missing.append(f"{where} -> ?")
    return missing


@pytest.mark.parametrize("name", sorted(set(public_modules())))
def test_public_functions_are_annotated(name):
    module = importlib.import_module(name)
    missing = []
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj):
            missing += unannotated(obj, f"{name}.{attr}")
        elif inspect.isclass(obj):
            for meth_name, meth in vars(obj).items():
                if inspect.isfunction(meth) and (not meth_name.startswith("_") or meth_name == "__init__"):
                    missing += unannotated(meth, f"{name}.{attr}.{meth_name}")
    assert not missing, "unannotated: " + ", ".join(missing)


def test_the_packages_say_they_are_typed():
    for package in (gtp_ref, complexity):
        assert (Path(package.__file__).parent / "py.typed").exists(), package.__name__
