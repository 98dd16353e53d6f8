"""CRLF files stay CRLF: the model sees LF (what it was trained on), the editor gets its own endings back."""

from __future__ import annotations


def uses_crlf(text: str) -> bool:
    """True when most line breaks in `text` are CRLF."""
    crlf = text.count("\r\n")
    return crlf > 0 and crlf * 2 >= text.count("\n")


def to_lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def restore_newlines(text: str, crlf: bool) -> str:
    return text.replace("\n", "\r\n") if crlf else text
