"""Golden tests for the post-processing filters (cases in golden/filters.toml) and the mode decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from codegemma import toml_compat as tomllib
from codegemma.complete import filters
from codegemma.complete.filters import FilterContext, apply_filters, decide_multiline
from codegemma.complete.language import syntax_for
from codegemma.fim import CODEGEMMA_SENTINELS

GOLDEN = tomllib.loads((Path(__file__).parent / "golden" / "filters.toml").read_text())["case"]
STOP_TEXTS = (*CODEGEMMA_SENTINELS.all(), "<eos>", "<end_of_turn>", "<start_of_turn>")


def _context(case: dict) -> FilterContext:
    return FilterContext(prefix=case["prefix"], suffix=case["suffix"], syntax=syntax_for(case["path"]),
                         multiline=case.get("multiline", True), stop_texts=STOP_TEXTS,
                         min_indent=case.get("min_indent"))


@pytest.mark.parametrize("case", GOLDEN, ids=[f"{c['filter']}: {c['name']}" for c in GOLDEN])
def test_golden(case):
    ctx = _context(case)
    if case["filter"] == "pipeline":
        got = apply_filters(case["completion"], ctx)
    else:
        got = getattr(filters, case["filter"])(case["completion"], ctx)
    assert got == case["expected"]


def test_every_filter_has_golden_cases():
    covered = {c["filter"] for c in GOLDEN}
    assert {f.__name__ for f in filters.PIPELINE} <= covered


@pytest.mark.parametrize("case", GOLDEN, ids=[f"{c['filter']}: {c['name']}" for c in GOLDEN])
def test_filters_only_cut(case):
    """Every filter returns a prefix of its input, which is what makes streaming them safe."""
    ctx = _context(case)
    text = case["completion"]
    for f in filters.PIPELINE:
        out = f(text, ctx)
        assert text.startswith(out), f.__name__
        text = out


@pytest.mark.parametrize("prefix, suffix, path, expected", [
    ("def f():\n    ", "\n", "a.py", True),  # blank line in a body
    ("def f():", "\n", "a.py", True),  # right after a block opener
    ("x = foo(", ")\n", "a.py", True),  # inside empty brackets: arguments may span lines
    ("x = compute", "(a)\n", "a.py", False),  # code follows the cursor
    ("x = 1  # the answer ", "\n", "a.py", False),  # in a comment
    ("s = '# not a comment' + ", "\n", "a.py", False),  # mid-statement, not a comment
    ("int x = 1", "\n", "a.c", False),
    ("int main() {", "\n}", "a.c", True),
    ("// see ", "\n", "a.go", False),
])
def test_decide_multiline(prefix, suffix, path, expected):
    assert decide_multiline(prefix, suffix, syntax_for(path)) is expected
