"""Benchmark data from a local path or a URL, downloaded once into a cache and checked by sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from codegemma import textfiles
from codegemma.errors import CodegemmaError


def cache_dir() -> Path:
    root = os.environ.get("CODEGEMMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "codegemma")
    return Path(root) / "eval"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, sha256: str | None = None) -> Path:
    """The cached copy of `url`, fetched on first use; a hash mismatch is an error, not a silent reuse."""
    target = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if not target.exists():
        import httpx

        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = httpx.get(url, follow_redirects=True, timeout=60)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CodegemmaError(f"cannot download {url}: {exc}") from exc
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(response.content)
        os.replace(tmp, target)
    if sha256 is not None:
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if digest != sha256:
            raise CodegemmaError(f"{target} (from {url}) has sha256 {digest}, expected {sha256}")
    return target


def local_or_download(source: str, sha256: str | None = None) -> Path:
    if is_url(source):
        return download(source, sha256)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CodegemmaError(f"benchmark data file not found: {path}")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Records of a .jsonl or .jsonl.gz file; a malformed line is reported with its number."""
    return textfiles.read_jsonl(path)
