"""Post-processing filters: turn what a model generated into what an editor should insert.

Each filter takes the completion text and a `FilterContext` (the LF-normalised prefix and suffix
around the cursor) and returns a prefix of the text: filters only ever cut, never rewrite, so
they compose in any order and are safe to run on a partial stream. Golden tests pin each one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from codegemma.complete.brackets import CLOSERS, OPENERS, BracketLexer, openers_closed_by, unmatched_openers
from codegemma.complete.language import DEFAULT_SYNTAX, Syntax

# Only this much text around the cursor is lexed for brackets: enough for any statement.
BRACKET_WINDOW = 4000
SUFFIX_PROBE_MIN = 3  # a shorter start of the suffix is only cut when the completion ends with it
REPEAT_COUNT = 3  # a block of lines seen this many times in a row is degenerate output
REPEAT_MAX_PERIOD = 8


@dataclass(frozen=True)
class FilterContext:
    prefix: str
    suffix: str
    syntax: Syntax = DEFAULT_SYNTAX
    multiline: bool = True
    stop_texts: tuple[str, ...] = ()
    min_indent: int | None = None  # llama.cpp's n_indent: a new line indented less than this ends the completion

    @property
    def cursor_line(self) -> str:
        """The text before the cursor on its line."""
        return self.prefix.rsplit("\n", 1)[-1]

    @property
    def rest_of_line(self) -> str:
        """The text after the cursor on its line."""
        return self.suffix.split("\n", 1)[0]


Filter = Callable[[str, FilterContext], str]


def indent_width(line: str) -> int:
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(4))


def scrub_stop_texts(text: str, ctx: FilterContext) -> str:
    """Cut at the first sentinel or turn marker that leaked as text, and at a half-spelled one at the end."""
    cut = len(text)
    for stop in ctx.stop_texts:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    text = text[:cut]
    for stop in ctx.stop_texts:
        for k in range(len(stop) - 1, 3, -1):
            if text.endswith(stop[:k]):
                return text[: len(text) - k]
    return text


def single_line(text: str, ctx: FilterContext) -> str:
    """In single-line mode, only the rest of the cursor's line."""
    return text if ctx.multiline else text.split("\n", 1)[0]


def cut_at_suffix_start(text: str, ctx: FilterContext) -> str:
    """Cut where the completion runs into the text right after the cursor."""
    probe = ctx.rest_of_line.strip()
    if not probe:
        return text
    if len(probe) >= SUFFIX_PROBE_MIN:
        at = text.find(probe)
        return text if at == -1 else text[:at]
    return text[: -len(probe)] if text.endswith(probe) else text


def cut_at_suffix_line(text: str, ctx: FilterContext) -> str:
    """Cut where the completion reproduces the next non-blank line below the cursor."""
    following = ctx.suffix.split("\n")[1:]
    target = next((line.strip() for line in following if line.strip()), "")
    if not target:
        return text
    lines = text.split("\n")
    first = 0 if not ctx.cursor_line.strip() else 1  # on a fresh line, the first line is a whole line too
    for i in range(first, len(lines)):
        if lines[i].strip() == target:
            return "\n".join(lines[:i]).rstrip("\n") if i else ""
    return text


def repetition_guard(text: str, ctx: FilterContext) -> str:
    """Keep one copy of a block of lines that repeats REPEAT_COUNT times in a row."""
    lines = text.split("\n")
    keys = [line.strip() for line in lines]  # the first line has no indentation of its own: compare stripped
    for start in range(len(lines)):
        for period in range(1, REPEAT_MAX_PERIOD + 1):
            end = start + period * REPEAT_COUNT
            if end > len(lines):
                break
            block = keys[start:start + period]
            if not any(re.search(r"\w", line) for line in block):
                continue
            if all(keys[start + k * period:start + (k + 1) * period] == block for k in range(1, REPEAT_COUNT)):
                return "\n".join(lines[:start + period])
    return text


def bracket_balance(text: str, ctx: FilterContext) -> str:
    """Cut before a closing bracket that does not match, or that the suffix already supplies."""
    lexer = BracketLexer(ctx.syntax)
    open_stack = unmatched_openers(ctx.prefix[-BRACKET_WINDOW:], lexer)
    owned = openers_closed_by(ctx.suffix[:BRACKET_WINDOW], open_stack, lexer.copy())
    free = len(open_stack) - owned  # prefix openers below this index are the completion's to close
    stack = list(open_stack)
    local: list[str] = []
    for pos, ch in lexer.brackets(text):
        if ch in OPENERS:
            local.append(ch)
        elif local:
            if local[-1] != CLOSERS[ch]:
                return text[:pos]
            local.pop()
        elif not stack or stack[-1] != CLOSERS[ch] or len(stack) - 1 >= free:
            return text[:pos]
        else:
            stack.pop()
    return text


def _opens_block(line: str, syntax: Syntax) -> bool:
    stripped = line.split(syntax.line_comment)[0].rstrip() if syntax.line_comment else line.rstrip()
    return any(stripped.endswith(opener) for opener in syntax.block_openers)


def indentation_scope(text: str, ctx: FilterContext) -> str:
    """A multi-line completion stays inside the block at the cursor: cut at the first line that leaves it."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    first = ctx.cursor_line + lines[0]
    if first.strip():
        ref = indent_width(first)
    else:  # a blank cursor line: the block is the one the cursor is indented into
        ref = indent_width(ctx.cursor_line)
    opens = _opens_block(first, ctx.syntax)
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        width = indent_width(line)
        if opens:
            if width > ref:
                continue
            if width == ref and (line.strip()[0] in CLOSERS or line.strip() in ("end", "fi", "done", "esac")):
                return "\n".join(lines[:i + 1])  # the line closing the block we opened ends the completion
            return "\n".join(lines[:i]).rstrip("\n")
        if width < ref:
            return "\n".join(lines[:i]).rstrip("\n")
        if ref == 0 and any(line.startswith(k) for k in ctx.syntax.top_level_keywords):
            return "\n".join(lines[:i]).rstrip("\n")  # a new top-level definition: a different scope
    return text


def minimum_indent(text: str, ctx: FilterContext) -> str:
    """llama.cpp's n_indent: a new line indented less than `min_indent` is not part of the completion."""
    if ctx.min_indent is None:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        if lines[i].strip() and indent_width(lines[i]) < ctx.min_indent:
            return "\n".join(lines[:i]).rstrip("\n")
    return text


def trim_trailing_space(text: str, ctx: FilterContext) -> str:
    """No trailing blank lines or spaces, and nothing at all when only whitespace is left."""
    if not text.strip():
        return ""
    return text.rstrip() if not ctx.rest_of_line.strip() else text


PIPELINE: tuple[Filter, ...] = (
    scrub_stop_texts,
    single_line,
    cut_at_suffix_start,
    cut_at_suffix_line,
    repetition_guard,
    bracket_balance,
    indentation_scope,
    minimum_indent,
    trim_trailing_space,
)


def apply_filters(text: str, ctx: FilterContext, filters: tuple[Filter, ...] = PIPELINE) -> str:
    for f in filters:
        text = f(text, ctx)
    return text


def decide_multiline(prefix: str, suffix: str, syntax: Syntax) -> bool:
    """Multi-line on a fresh line or right after a block opener; single-line mid-line or in a comment."""
    before = prefix.rsplit("\n", 1)[-1]
    after = suffix.split("\n", 1)[0]
    if after.strip(" \t)]};:,\"'`"):
        return False  # code follows the cursor on this line: finish the line only
    if syntax.line_comment and _in_line_comment(before, syntax):
        return False
    if not before.strip():
        return True
    return _opens_block(before, syntax)


def _in_line_comment(line: str, syntax: Syntax) -> bool:
    lexer = BracketLexer(syntax)
    for _ in lexer.brackets(line):
        pass
    return lexer.in_comment
