"""Exact and near-duplicate removal, at file and at repository level.

Exact: SHA-256 of the file content; of a repository, SHA-256 of its sorted (path, content hash) list.
Near: MinHash (`datasketch`, 256 permutations) of 5-gram shingles over `[A-Za-z0-9_]+` code tokens,
LSH at Jaccard 0.7 (25 bands x 10 rows), candidate pairs confirmed by their estimated Jaccard, and
clusters formed by union-find. Files under 5 tokens get no MinHash (bigcode's rule); exact dedup
still covers them. A repository's MinHash is the element-wise minimum of its files' MinHashes, which
is exactly the MinHash of the union of their shingles.

Survivor priority, highest first, in every cluster: permissive license > no license found > other
license; more stars; more forks; more content; then the lexicographically smallest (repository,
path), so the choice is deterministic. Repository-level dedup runs first (forks and vendored copies
go whole), then file-level dedup over the repositories that remain.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from codegemma.data.licenses import license_rank

TOKEN = re.compile(rb"[A-Za-z0-9_]+")
NUM_PERM = 256
NGRAM = 5
THRESHOLD = 0.7
SEED = 1
SCHEME = "affine32"  # datasketch's hashing scheme, fixed so stored signatures stay comparable


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    repository_level: bool = True
    num_perm: int = NUM_PERM
    ngram: int = NGRAM
    threshold: float = THRESHOLD
    seed: int = SEED


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shingles(text: str, n: int = NGRAM) -> list[bytes]:
    tokens = TOKEN.findall(text.encode("utf-8"))
    if len(tokens) < n:
        return []
    return [b" ".join(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def _hash32(data: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def minhash(text: str, num_perm: int = NUM_PERM, n: int = NGRAM, seed: int = SEED) -> np.ndarray | None:
    """The MinHash hash values of a text's shingle set, or None under n tokens."""
    from datasketch import MinHash

    grams = set(shingles(text, n))
    if not grams:
        return None
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=_hash32, scheme=SCHEME)
    m.update_batch(list(grams))
    return np.asarray(m.hashvalues)


@dataclass
class Item:
    """One dedup candidate: a file or a repository, with what the survivor choice looks at."""

    id: str
    exact: str
    signature: np.ndarray | None
    license: str | None = None
    stars: int = 0
    forks: int = 0
    size: int = 0
    name: tuple[str, ...] = ()

    def priority(self):
        # larger is better; the name is negated via sorting below so the smallest name wins ties
        return (license_rank(self.license), self.stars, self.forks, self.size)


@dataclass
class DedupResult:
    dropped: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (reason, survivor id)
    clusters: list[list[str]] = field(default_factory=list)  # near-duplicate clusters of 2 or more


def _best(items: list[Item]) -> Item:
    return sorted(items, key=lambda it: tuple(-x for x in it.priority()) + it.name)[0]


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_clusters(items: list[Item], cfg: DedupConfig) -> list[list[str]]:
    """Clusters (size >= 2) of items whose estimated Jaccard similarity reaches the threshold."""
    from datasketch import MinHashLSH

    signed = [it for it in items if it.signature is not None]
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    by_id = {it.id: it for it in signed}
    lean = {}
    for it in signed:
        lean[it.id] = _lean(it.signature, cfg.seed)
        lsh.insert(it.id, lean[it.id], check_duplication=False)
    uf = _UnionFind()
    for it in signed:
        for other in lsh.query(lean[it.id]):
            if other != it.id and _jaccard(it.signature, by_id[other].signature) >= cfg.threshold:
                uf.union(it.id, other)
    groups: dict[str, list[str]] = {}
    for it in signed:
        groups.setdefault(uf.find(it.id), []).append(it.id)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def _lean(values: np.ndarray, seed: int):
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=values, scheme=SCHEME)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


def deduplicate(items: list[Item], cfg: DedupConfig) -> DedupResult:
    """Which items to drop (exact duplicates first, then near duplicates), each with its survivor."""
    result = DedupResult()
    by_id = {it.id: it for it in items}
    remaining = items
    if cfg.exact:
        groups: dict[str, list[Item]] = {}
        for it in items:
            groups.setdefault(it.exact, []).append(it)
        for group in groups.values():
            if len(group) > 1:
                keep = _best(group)
                for it in group:
                    if it is not keep:
                        result.dropped[it.id] = ("exact_duplicate", keep.id)
        remaining = [it for it in items if it.id not in result.dropped]
    if cfg.near:
        for cluster in near_clusters(remaining, cfg):
            result.clusters.append(cluster)
            keep = _best([by_id[i] for i in cluster])
            for i in cluster:
                if i != keep.id:
                    result.dropped[i] = ("near_duplicate", keep.id)
    return result


def repository_item(repo_id: str, files: list[tuple[str, str, np.ndarray | None]], license: str | None,
                    stars: int, forks: int, size: int, name: tuple[str, ...]) -> Item:
    """A repository as one dedup item from its files' (path, content hash, MinHash)."""
    listing = "\n".join(f"{path}\0{digest}" for path, digest, _ in sorted(files, key=lambda f: f[0]))
    signatures = [sig for _, _, sig in files if sig is not None]
    signature = np.minimum.reduce(signatures) if signatures else None
    return Item(repo_id, hashlib.sha256(listing.encode()).hexdigest(), signature, license, stars, forks, size, name)
