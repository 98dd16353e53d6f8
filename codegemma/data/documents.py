"""The records that flow through the pipeline: a file with its metadata, grouped by repository."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field


@dataclass
class Document:
    """One file (or one natural-language document) and what is known about it."""

    repo: str
    path: str
    content: str
    language: str | None = None
    license: str | None = None
    source: str = ""
    size: int = 0  # bytes of UTF-8 content as read, before any redaction
    stars: int = 0
    forks: int = 0

    def __post_init__(self):
        if not self.size:
            self.size = len(self.content.encode("utf-8"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Document":
        return cls(**d)


@dataclass
class Repository:
    """The unit of work: the files of one repository, processed together by one worker."""

    name: str
    source: str
    documents: list[Document] = field(default_factory=list)
    license: str | None = None

    @property
    def key(self) -> str:
        return repo_key(self.source, self.name)


def repo_key(source: str, name: str) -> str:
    """A file-name-safe, collision-free key for a repository (readable prefix + hash)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source}__{name}")[:80]
    digest = hashlib.sha1(f"{source}\0{name}".encode()).hexdigest()[:12]
    return f"{readable}-{digest}"
