"""Reading the text and JSON files a user names, so that a bad one is one error naming the file and
the place: bytes that are not UTF-8 (their offset), a line that is not JSON (its number), a .gz
file cut short or corrupt. Python's own errors for these (UnicodeDecodeError, EOFError, zlib.error)
name no file, and the CLI would show them as tracebacks."""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from pathlib import Path
from typing import Iterator

from codegemma.errors import CodegemmaError

# what reading a truncated or non-gzip .gz file raises (BadGzipFile is an OSError with no filename)
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
_JSON_NAMES = {dict: "object", list: "array"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def utf8(data: bytes, where) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodegemmaError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def checked_text(text: str, where: str) -> str:
    """`text` from the command line or stdin, where bytes that are not UTF-8 arrive as lone
    surrogates (Python's surrogateescape), which no tokenizer can encode: refused, with the offset."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodegemmaError(f"{where}: not UTF-8 text (byte {len(text[:exc.start].encode('utf-8'))})") from None
    return text


def read_stdin(where: str = "stdin", line: bool = False) -> str:
    """All of stdin, or its next line, refusing bytes that are not UTF-8 whether the locale made
    sys.stdin strict (UnicodeDecodeError) or lenient (surrogateescape)."""
    try:
        text = sys.stdin.readline() if line else sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise CodegemmaError(f"{where}: not UTF-8 text ({exc.reason})") from None
    return checked_text(text, where)


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a .gz one decompressed)."""
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except _GZIP_ERRORS as exc:
        raise CodegemmaError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    return utf8(data, path)


def read_json(path: str | os.PathLike, expect: type | None = None):
    """The JSON value of a file; with `expect` (dict, list), a value of another type is an error."""
    path = Path(path)
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise CodegemmaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if expect is not None and not isinstance(value, expect):
        raise CodegemmaError(f"{path}: expected a JSON {_JSON_NAMES.get(expect, expect.__name__)}, "
                             f"got {type(value).__name__}")
    return value


def lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file (a .gz one decompressed)."""
    path = Path(path)
    offset = 0
    try:
        with _open(path) as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CodegemmaError(f"{path}:{number}: not UTF-8 text (byte {offset + exc.start})") from None
                offset += len(raw)
                yield number, line
    except _GZIP_ERRORS as exc:
        raise CodegemmaError(f"{path}: truncated or corrupt gzip file ({exc})") from None


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (blank lines still count, so
    an error names the line an editor shows); a line that is not a JSON object is an error."""
    for number, line in lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CodegemmaError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise CodegemmaError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [record for _, record in json_lines(path)]

