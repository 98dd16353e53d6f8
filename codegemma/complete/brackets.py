"""A small lexer that finds brackets outside strings and line comments.

Enough for balance checks over a few thousand characters around the cursor; it is not a parser.
It knows single-line strings, triple-quoted strings, backtick strings, escapes and line comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from codegemma.complete.language import Syntax

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}


@dataclass
class BracketLexer:
    syntax: Syntax
    quote: str | None = None  # the delimiter of the string we are inside, e.g. '"' or '"""'
    in_comment: bool = False
    escaped: bool = False

    def copy(self) -> "BracketLexer":
        return BracketLexer(self.syntax, self.quote, self.in_comment, self.escaped)

    def brackets(self, text: str) -> Iterator[tuple[int, str]]:
        """(position, bracket) for every bracket in `text` that is code, advancing the lexer state."""
        comment = self.syntax.line_comment
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\n":
                self.in_comment = False
                self.escaped = False
                if self.quote is not None and len(self.quote) == 1 and self.quote != "`":
                    self.quote = None  # an unterminated one-line string ends at the line
                i += 1
                continue
            if self.in_comment:
                i += 1
                continue
            if self.quote is not None:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif text.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = None
                    continue
                i += 1
                continue
            if comment and text.startswith(comment, i):
                self.in_comment = True
                i += len(comment)
                continue
            if ch in self.syntax.quotes:
                triple = ch * 3
                self.quote = triple if self.syntax.indent_blocks and text.startswith(triple, i) else ch
                i += len(self.quote)
                continue
            if ch in OPENERS or ch in CLOSERS:
                yield i, ch
            i += 1


def unmatched_openers(text: str, lexer: BracketLexer) -> list[str]:
    """The openers in `text` still open at its end (innermost last); stray closers are ignored."""
    stack: list[str] = []
    for _, ch in lexer.brackets(text):
        if ch in OPENERS:
            stack.append(ch)
        elif stack and stack[-1] == CLOSERS[ch]:
            stack.pop()
        elif CLOSERS[ch] in stack:  # skip over an opener that was never closed
            while stack and stack.pop() != CLOSERS[ch]:
                pass
    return stack


def openers_closed_by(suffix: str, open_stack: list[str], lexer: BracketLexer) -> int:
    """How many of the innermost `open_stack` openers the suffix closes before it closes anything else."""
    remaining = list(open_stack)
    local: list[str] = []
    closed = 0
    for _, ch in lexer.brackets(suffix):
        if ch in OPENERS:
            local.append(ch)
        elif local:
            if local[-1] != CLOSERS[ch]:
                break
            local.pop()
        elif remaining and remaining[-1] == CLOSERS[ch]:
            remaining.pop()
            closed += 1
        else:
            break
    return closed
