"""Repository context from disk: the other source files of the language being completed."""

from __future__ import annotations

import os
from pathlib import Path

from codegemma.data.languages import detect_language
from codegemma.errors import CodegemmaError

SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", "build", "dist", "target",
             ".mypy_cache", ".pytest_cache", ".tox"}
MAX_FILE_BYTES = 200_000
MAX_FILES = 400


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CodegemmaError(f"file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise CodegemmaError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CodegemmaError(f"{path}: {exc.strerror}") from None


def collect_repo_files(repo: Path, current: Path | None) -> list[tuple[str, str]]:
    """(path relative to `repo`, text) of source files in the language of `current` (all languages
    when it has none), skipping vendored and build folders, binary and very large files."""
    if not repo.is_dir():
        raise CodegemmaError(f"--repo: not a directory: {repo}")
    language = detect_language(str(current)) if current else None
    current_resolved = current.resolve() if current else None
    out: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if current_resolved is not None and path.resolve() == current_resolved:
                continue
            lang = detect_language(str(path))
            if lang is None or (language is not None and lang != language):
                continue
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            out.append((path.relative_to(repo).as_posix(), text))
            if len(out) >= MAX_FILES:
                return out
    return out
