"""The README's examples run, so the docs cannot drift from the code."""

import doctest
from pathlib import Path

import pytest

from tests.helpers import import_timm

ROOT = Path(__file__).resolve().parents[2]


def test_readme_examples():
    import_timm()  # the first example puts GTP into a timm model
    pytest.importorskip(
        "transformers", reason="the second puts GTP into an HF model: pip install 'gtp-ref[hf]'"
    )
    # A closing ``` fence (indented too, inside a list) would read as expected output: blank it out.
    text = "\n".join(
        "" if line.lstrip().startswith("```") else line
        for line in (ROOT / "README.md").read_text().splitlines()
    )
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {}, "README.md", str(ROOT / "README.md"), 0)
    assert test.examples, "README.md has no >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} README example(s) failed; see the output above"
