"""Write files and directories so a reader never sees half of one: temporary name, then rename."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from codegemma.errors import CodegemmaError


def dir_target(path: str | os.PathLike) -> Path:
    """`path` as a directory to create or write into, checked before the work: a file there or in
    its way is "Not a directory" (mkdir's error for a file at `path` itself is "File exists")."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
            break
    return path


def file_target(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a file to write (`what`: ".jsonl file"), checked before the work: a directory
    there, or a name ending in a slash (a directory to be), would otherwise fail once the work is
    done, or become a file."""
    if Path(path).is_dir():
        raise CodegemmaError(f"{path} is a directory: name a {what} to write")
    if os.fspath(path).endswith(("/", os.sep)):
        raise CodegemmaError(f"{os.fspath(path)} ends in a slash, so it names a directory: name a {what} to write")
    dir_target(Path(path).parent)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    dir_target(path.parent).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are read by others too (shared filesystems)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # a full disk, say: the error names the file asked for, not the temporary
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh sibling directory to fill before `publish_dir` moves it into place."""
    final = Path(final)
    dir_target(final.parent).mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    stage.chmod(0o755)  # mkdtemp creates 0700, and the directory keeps its mode when it is renamed into place
    return stage


def check_replaceable(final: str | os.PathLike, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse a `final` that `publish_dir` would replace but that is not an earlier output of the same
    kind: a file, or a non-empty directory for which `ours` is false. Called before the work, so a
    mistyped output path costs nothing and deletes nothing."""
    final = Path(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise CodegemmaError(f"{final} exists and is not a directory")
    if any(final.iterdir()) and not ours(final):
        raise CodegemmaError(f"{final} exists and is not {what}; it is left as it is: choose another output "
                             "directory")


def publish_dir(staged: Path, final: str | os.PathLike) -> None:
    """Move a finished staging directory to `final`, replacing what was there (see `check_replaceable`)."""
    final = Path(final)
    if final.exists():
        # a directory cannot be os.replace'd over a non-empty one: move the old one aside first
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / "x")
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)
