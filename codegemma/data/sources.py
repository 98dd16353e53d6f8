"""Where files come from: local directories, git repositories (bare or not), tarballs, zip files and
Hugging Face `datasets` streams. Sources are listed cheaply as `RepoRef`s and loaded by workers."""

from __future__ import annotations

import lzma
import os
import subprocess
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from codegemma.data.documents import Document, Repository
from codegemma.data.languages import detect_language
from codegemma.data.licenses import identify, is_license_file
from codegemma.errors import CodegemmaError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".tox", ".venv", ".mypy_cache"})


@dataclass
class SourceSpec:
    """One `[[sources]]` entry of a recipe."""

    name: str
    path: str | None = None  # directory, git repository, tarball or zip file
    layout: str = "collection"  # "collection": every child of `path` is a repository; "repository": `path` is one
    kind: str = "code"  # "code" (repository-packed, FIM) or "text" (natural language, one document each)
    weight: float = 1.0
    hf: str | None = None  # a `datasets` name or builder ("json", "parquet"), read with streaming=True
    hf_config: str | None = None
    data_files: str | list[str] | None = None
    split: str = "train"
    columns: dict = field(default_factory=dict)  # content/path/repo/license/stars column names
    max_repos: int | None = None
    max_file_bytes: int = 1_000_000

    def __post_init__(self):
        if (self.path is None) == (self.hf is None):
            raise CodegemmaError(f"source {self.name!r}: give exactly one of `path` or `hf`")
        if self.layout not in ("collection", "repository"):
            raise CodegemmaError(f"source {self.name!r}: layout must be 'collection' or 'repository', not {self.layout!r}")
        if self.kind not in ("code", "text"):
            raise CodegemmaError(f"source {self.name!r}: kind must be 'code' or 'text', not {self.kind!r}")
        if self.weight < 0:
            raise CodegemmaError(f"source {self.name!r}: weight must be >= 0")


@dataclass
class RepoRef:
    """A repository to load: where it is, or (for streamed sources) its files already in memory."""

    source: str
    name: str
    kind: str  # dir | git | tar | zip | inline | stored
    location: str = ""
    max_file_bytes: int = 1_000_000
    inline: Repository | None = None


def list_repositories(spec: SourceSpec) -> Iterator[RepoRef]:
    refs = _hf_refs(spec) if spec.hf else _path_refs(spec)
    for i, ref in enumerate(refs):
        if spec.max_repos is not None and i >= spec.max_repos:
            break
        yield ref


def _path_refs(spec: SourceSpec) -> Iterator[RepoRef]:
    root = Path(spec.path).expanduser()
    if not root.exists():
        raise CodegemmaError(f"source {spec.name!r}: {root} does not exist")
    if spec.layout == "repository":
        yield _ref_for(spec, root, _repo_name(root))
        return
    if not root.is_dir():
        raise CodegemmaError(f"source {spec.name!r}: a collection must be a directory, {root} is not")
    found = False
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or child.is_symlink():
            continue
        if child.is_dir() or child.name.lower().endswith(ARCHIVE_SUFFIXES):
            found = True
            yield _ref_for(spec, child, _repo_name(child))
    if not found:
        raise CodegemmaError(f"source {spec.name!r}: {root} holds no repository folders or archives (a collection "
                             "holds one per repository); for a single repository set layout = \"repository\"")


def _repo_name(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES + (".git",):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _ref_for(spec: SourceSpec, path: Path, name: str) -> RepoRef:
    lower = path.name.lower()
    if path.is_dir():
        kind = "git" if is_git_repository(path) else "dir"
    elif lower.endswith(".zip"):
        kind = "zip"
    elif lower.endswith(ARCHIVE_SUFFIXES):
        kind = "tar"
    else:
        raise CodegemmaError(f"source {spec.name!r}: {path} is not a directory, git repository, tarball or zip")
    return RepoRef(spec.name, name, kind, str(path), spec.max_file_bytes)


def is_git_repository(path: Path) -> bool:
    bare = (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
    return bare or (path / ".git").exists()


def load_repository(ref: RepoRef) -> Repository:
    """The files of a repository as Documents, with language and license filled in."""
    if ref.inline is not None:
        return ref.inline
    if ref.kind == "stored":
        return read_stored(Path(ref.location))
    readers = {"dir": _read_dir, "git": _read_git, "tar": _read_tar, "zip": _read_zip}
    files: list[tuple[str, bytes]] = []
    try:
        for path, data in readers[ref.kind](Path(ref.location), ref.max_file_bytes):
            files.append((path, data))
    # EOFError, zlib.error and LZMAError: a compressed archive cut short or corrupt
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile,
            subprocess.CalledProcessError) as exc:
        raise CodegemmaError(f"cannot read repository {ref.location}: {exc}") from None
    return build_repository(ref.source, ref.name, files)


def store_repository(repo: Repository, path: Path) -> None:
    """Keep a streamed repository on disk, so workers and resumed runs can load it again."""
    import gzip
    import json

    from codegemma.data.atomic import write_bytes

    data = {"name": repo.name, "source": repo.source, "license": repo.license,
            "documents": [d.to_dict() for d in repo.documents]}
    write_bytes(path, gzip.compress(json.dumps(data).encode("utf-8"), mtime=0))


def read_stored(path: Path) -> Repository:
    import gzip
    import json

    data = json.loads(gzip.decompress(path.read_bytes()))
    return Repository(name=data["name"], source=data["source"], license=data["license"],
                      documents=[Document.from_dict(d) for d in data["documents"]])


def build_repository(source: str, name: str, files: list[tuple[str, bytes | str]], stars: int = 0, forks: int = 0,
                     license: str | None = None) -> Repository:
    documents = []
    for path, data in sorted(files):
        text = data if isinstance(data, str) else decode_text(data)
        if text is None:
            continue
        if license is None and is_license_file(path):
            license = identify(text)
        documents.append(Document(repo=name, path=path, content=text, language=detect_language(path, text),
                                  source=source, stars=stars, forks=forks))
    for doc in documents:
        doc.license = license
    return Repository(name=name, source=source, documents=documents, license=license)


def decode_text(data: bytes) -> str | None:
    """UTF-8 text, or None for binary content (a NUL byte or invalid UTF-8)."""
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_dir(root: Path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file() or full.stat().st_size > max_bytes:
                continue
            yield full.relative_to(root).as_posix(), full.read_bytes()


def _read_git(root: Path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """Files of HEAD, read from the object store: works for bare clones and ignores untracked files."""
    git = ["git", "-c", "safe.directory=*", "-C", str(root)]
    listing = subprocess.run(git + ["ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD"], capture_output=True)
    if listing.returncode != 0:
        if b"Not a valid object name" in listing.stderr or b"not a tree object" in listing.stderr:
            return  # a repository without commits
        raise subprocess.CalledProcessError(listing.returncode, "git ls-tree", stderr=listing.stderr)
    blobs = []
    for entry in listing.stdout.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha, size = meta.split()
        # regular files only: symlinks (120000) and submodules (160000) are not content
        name = path.decode("utf-8", "replace")
        if kind == b"blob" and mode in (b"100644", b"100755") and int(size) <= max_bytes and _keep(name):
            blobs.append((name, sha.decode()))
    if not blobs:
        return
    out = subprocess.run(git + ["cat-file", "--batch"], input="".join(s + "\n" for _, s in blobs).encode(),
                         capture_output=True, check=True).stdout
    at = 0
    for path, sha in blobs:
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        yield path, out[header_end + 1: header_end + 1 + size]
        at = header_end + 1 + size + 1


def _strip_common_root(names: list[str]) -> str:
    """The single top-level directory every member sits in ("project-1.0/"), or ""."""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names):
        return tops.pop() + "/"
    return ""


def _keep(path: str) -> bool:
    return not any(part in SKIP_DIRS for part in PurePosixPath(path).parts)


def _read_tar(path: Path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        root = _strip_common_root([m.name for m in members])
        for m in members:
            name = m.name[len(root):]
            if m.size <= max_bytes and _keep(name):
                yield name, tar.extractfile(m).read()


def _read_zip(path: Path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        root = _strip_common_root([i.filename for i in members])
        for info in members:
            name = info.filename[len(root):]
            if info.file_size <= max_bytes and _keep(name):
                yield name, zf.read(info)


def _hf_refs(spec: SourceSpec) -> Iterator[RepoRef]:
    """Rows of a streamed dataset, grouped into repositories by consecutive equal repository names."""
    try:
        import datasets
    except ImportError:
        raise CodegemmaError(f"source {spec.name!r}: the `datasets` package is needed for hf sources") from None
    try:
        stream = datasets.load_dataset(spec.hf, spec.hf_config, data_files=spec.data_files, split=spec.split,
                                       streaming=True)
    except Exception as exc:  # datasets raises many types for a missing or malformed dataset
        raise CodegemmaError(f"source {spec.name!r}: cannot open dataset {spec.hf!r}: {exc}") from None
    col = {"content": "content", "path": "path", "repo": "repo", "license": "license", "stars": "stars", **spec.columns}
    seen: dict[str, int] = {}
    current: tuple[str, list] | None = None

    def flush(name, rows):
        # a repository whose rows are not contiguous in the stream becomes several units, each named apart
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique = name if count == 0 else f"{name}#{count + 1}"
        first = rows[0]
        repo = build_repository(spec.name, unique, [(r[0], r[1]) for r in rows], stars=first[2], forks=0,
                                license=first[3])
        return RepoRef(spec.name, unique, "inline", inline=repo)

    for i, row in enumerate(stream):
        if col["content"] not in row:
            raise CodegemmaError(f"source {spec.name!r}: row {i} has no column {col['content']!r}")
        content = row[col["content"]]
        if not isinstance(content, str) or len(content.encode("utf-8")) > spec.max_file_bytes:
            continue
        name = str(row.get(col["repo"]) or f"row-{i}")
        path = str(row.get(col["path"]) or f"doc-{i}.txt")
        entry = (path, content, int(row.get(col["stars"]) or 0), row.get(col["license"]))
        if current is not None and current[0] == name:
            current[1].append(entry)
            continue
        if current is not None:
            yield flush(*current)
        current = (name, [entry])
    if current is not None:
        yield flush(*current)
