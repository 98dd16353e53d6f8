"""Context budget in tokens: how much of the file and of the repository goes into a prompt.

The prefix is trimmed from the left and the suffix from the right, sharing the file's budget
about 3:1 (the text just before the cursor matters most; llama.cpp uses the same ratio).
Cuts fall on line starts. The prefix's cut points are anchored to the start of the file in
blocks of characters, so while a user types, the window does not move with every keystroke and
the engine can keep reusing its cached prompt; the suffix does not change while typing at all.
Only a single line longer than the whole budget is cut mid-way, and never inside a sentinel.
Python strings index code points, so no cut can split a multi-byte character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from codegemma.errors import CodegemmaError

Counter = Callable[[str], int]

# The smallest prompt budget a completion accepts: BOS and the three FIM sentinels leave a few tokens
# of the file. (`Budget` itself takes less: training's infilling evaluation trims to tiny budgets.)
MIN_PROMPT_TOKENS = 9
SUFFIX_STEP = 64  # tokens
CHARS_PER_TOKEN = 3  # a rough figure for code; only used to space the prefix anchors
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclass(frozen=True)
class Budget:
    max_prompt_tokens: int = 1536
    prefix_share: float = 0.75  # of the file window; the suffix gets the rest
    context_fraction: float = 0.5  # at most this much of the prompt goes to other files
    anchor_steps: int = 16  # the prefix cut moves in steps of about max_prompt_tokens / anchor_steps

    def __post_init__(self):
        if self.max_prompt_tokens < 1:
            raise CodegemmaError(f"max_prompt_tokens must be at least 1, got {self.max_prompt_tokens}")


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _avoid_splitting(text: str, pos: int, protected: Sequence[str], forward: bool) -> int:
    """Move `pos` out of any protected string (a sentinel's text, a CRLF pair) it falls inside."""
    for token in [*protected, "\r\n"]:
        start = text.rfind(token, max(0, pos - len(token) + 1), pos + len(token) - 1)
        if start != -1 and start < pos < start + len(token):
            return start + len(token) if forward else start
    return pos


def _largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest k in [lo, hi] with fits(k), assuming fits is monotone (true then false); lo-1 if none."""
    best = lo - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def trim_prefix(prefix: str, budget: int, count: Counter, steps: int = 16, protected: Sequence[str] = ()) -> str:
    """The longest tail of `prefix` within `budget` tokens, cut at an anchored line start.

    Anchors are the first line start in each block of about budget/steps tokens' worth of
    characters, counted from the start of the file: typing at the end cannot move them, so the
    cut moves only once per block the user types, and at most one block of budget is left unused.
    """
    if budget <= 0:
        return ""
    if count(prefix) <= budget:
        return prefix
    starts = _line_starts(prefix)
    step = max(16, budget * CHARS_PER_TOKEN // steps)
    candidates, bucket = [], -1
    for start in starts:
        if start // step != bucket:
            candidates.append(start)
            bucket = start // step
    if candidates[-1] != starts[-1]:
        candidates.append(starts[-1])  # the cursor's line start is always a candidate
    # keeping more text never costs fewer tokens, so the fitting candidates are a tail of the list
    i = _largest_fitting(0, len(candidates) - 1, lambda k: count(prefix[candidates[-1 - k]:]) <= budget)
    if i >= 0:
        return prefix[candidates[-1 - i]:]
    # even the cursor's own line is too long: cut inside it
    n = _largest_fitting(0, len(prefix) - starts[-1], lambda m: count(prefix[len(prefix) - m:]) <= budget)
    cut = _avoid_splitting(prefix, len(prefix) - max(n, 0), protected, forward=True)
    return prefix[cut:]


def trim_suffix(suffix: str, budget: int, count: Counter, protected: Sequence[str] = ()) -> str:
    """The longest head of `suffix` within `budget` tokens, ending at a line end.

    Typing at the cursor does not change the suffix, so any cut of it is stable: whole lines will do.
    """
    if budget <= 0:
        return ""
    if count(suffix) <= budget:
        return suffix
    ends = [m.end() for m in re.finditer("\n", suffix)]  # just after each newline
    i = _largest_fitting(0, len(ends) - 1, lambda k: count(suffix[:ends[k]]) <= budget)
    if i >= 0:
        return suffix[:ends[i]]
    first = ends[0] if ends else len(suffix)
    n = _largest_fitting(0, first, lambda m: count(suffix[:m]) <= budget)
    cut = _avoid_splitting(suffix, max(n, 0), protected, forward=False)
    return suffix[:cut]


def split_file_budget(prefix: str, suffix: str, budget: int, count: Counter, share: float = 0.75,
                      steps: int = 16, protected: Sequence[str] = ()) -> tuple[str, str]:
    """Trim prefix and suffix to `budget` tokens together, about `share` : 1 - share; a side that
    needs less than its share gives the rest to the other."""
    prefix_need, suffix_need = count(prefix), count(suffix)
    if prefix_need + suffix_need <= budget:
        return prefix, suffix
    prefix_cap = int(budget * share)
    suffix_cap = budget - prefix_cap
    if suffix_need < suffix_cap:
        prefix_cap = budget - suffix_need
    elif prefix_need < prefix_cap:
        # the suffix takes what the short prefix leaves, in steps, so that its cut does not move
        # with every character typed
        suffix_cap = max(suffix_cap, (budget - prefix_need) // SUFFIX_STEP * SUFFIX_STEP)
    return (trim_prefix(prefix, prefix_cap, count, steps, protected),
            trim_suffix(suffix, suffix_cap, count, protected))


def identifiers(text: str) -> set[str]:
    return set(IDENTIFIER.findall(text))


def rank_context(files: Sequence[tuple[str, str]], query_text: str, current_path: str | None = None
                 ) -> list[tuple[str, str]]:
    """Context files, least relevant first (the most relevant ends up nearest the cursor).

    Relevance is the Jaccard similarity of identifier sets with the text around the cursor, plus
    one for a file whose module name the current file mentions (an import, most of the time).
    """
    query = identifiers(query_text)

    def score(item: tuple[str, str]) -> tuple[float, str]:
        path, content = item
        ids = identifiers(content)
        jaccard = len(ids & query) / len(ids | query) if ids or query else 0.0
        stem = re.split(r"[\\/]", path)[-1].rsplit(".", 1)[0]
        mentioned = 1.0 if len(stem) > 1 and re.search(rf"\b{re.escape(stem)}\b", query_text) else 0.0
        return (jaccard + mentioned, path)

    return sorted((f for f in files if f[0] != current_path), key=score)


def fit_context(files: Sequence[tuple[str, str]], budget: int, count: Counter, overhead: Callable[[str], int],
                min_useful: int = 32) -> list[tuple[str, str]]:
    """Keep the most relevant files (the end of the ranked list) within `budget` tokens; a file that
    does not fit whole keeps its head (imports and signatures come first) when enough room is left."""
    kept: list[tuple[str, str]] = []
    left = budget
    for path, content in reversed(files):
        cost, need = overhead(path), count(content)
        if need + cost <= left:
            kept.append((path, content))
            left -= need + cost
            continue
        if left - cost < min_useful:
            continue  # a smaller, less relevant file may still fit whole
        head = trim_suffix(content, left - cost, count)
        if head.strip():
            kept.append((path, head))
            left -= count(head) + cost
    return kept[::-1]
