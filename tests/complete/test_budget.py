"""Token budgets: trimming direction, the 3:1 share, stable cut points, no split sentinel or character."""

from __future__ import annotations

import pytest

from codegemma.complete.budget import (Budget, fit_context, rank_context, split_file_budget, trim_prefix,
                                      trim_suffix)
from codegemma.errors import CodegemmaError

LINES = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 200))


def test_trim_prefix_keeps_the_end_on_line_boundaries(fim_tokenizer):
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    kept = trim_prefix(LINES + "result = ", 200, count)
    assert kept.endswith("result = ")
    assert count(kept) <= 200 and count(kept) > 120  # the budget is used, up to one step of lines
    assert LINES.endswith(kept[: -len("result = ")]) and kept.startswith("value_")


def test_trim_suffix_keeps_the_start(fim_tokenizer):
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    kept = trim_suffix(LINES, 100, count)
    assert LINES.startswith(kept) and kept.endswith("\n")
    assert 60 < count(kept) <= 100


def test_prefix_cut_does_not_move_while_typing(fim_tokenizer):
    """The cut point stays put across keystrokes, which keeps the cached prompt valid."""
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    typed = "total = compute_everything(alpha, beta)"
    cuts = set()
    for n in range(len(typed)):
        prefix = LINES + typed[:n]
        kept = trim_prefix(prefix, 400, count)
        cuts.add(len(prefix) - len(kept))
    assert len(cuts) <= 2


def test_file_budget_shares_three_to_one(fim_tokenizer):
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    prefix, suffix = split_file_budget(LINES, LINES, 400, count)
    assert count(prefix) + count(suffix) <= 400
    assert 2.0 <= count(prefix) / count(suffix) <= 4.5
    # a short suffix leaves its share to the prefix
    prefix, suffix = split_file_budget(LINES, "\nprint(x)\n", 400, count)
    assert suffix == "\nprint(x)\n" and count(prefix) > 330


def test_long_line_is_cut_but_never_inside_a_sentinel_or_character(fim_tokenizer):
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    sentinel = "<|fim_suffix|>"
    line = "s = '" + ("é€" * 40 + sentinel) * 6
    for budget in range(5, 120, 7):
        kept = trim_prefix(line, budget, count, protected=(sentinel,))
        assert count(kept) <= budget + 1 and line.endswith(kept)
        start = len(line) - len(kept)
        for at in range(len(line)):
            if line.startswith(sentinel, at):
                assert not at < start < at + len(sentinel)
        head = trim_suffix(line, budget, count, protected=(sentinel,))
        assert line.startswith(head)
        for at in range(len(line)):
            if line.startswith(sentinel, at):
                assert not at < len(head) < at + len(sentinel)


def test_context_files_ranked_and_fitted(fim_tokenizer):
    count = lambda t: len(fim_tokenizer.encode(t))  # noqa: E731
    files = [("docs/readme.py", "banana = 1\n" * 5), ("geometry.py", "def circle_area(radius):\n    return radius\n"),
             ("shapes.py", "class Square:\n    side = 1\n")]
    query = "from geometry import circle_area\n\nprint(circle_area(radius))"
    ranked = rank_context(files, query, current_path="main.py")
    assert ranked[-1][0] == "geometry.py" and ranked[0][0] == "docs/readme.py"
    kept = fit_context(ranked, 40, count, overhead=lambda p: 1 + count(p + "\n"), min_useful=4)
    assert kept[-1][0] == "geometry.py"
    assert sum(count(c) + 1 + count(p + "\n") for p, c in kept) <= 40


def test_a_budget_holds_at_least_one_token():
    with pytest.raises(CodegemmaError, match="max_prompt_tokens must be at least 1, got 0"):
        Budget(max_prompt_tokens=0)
