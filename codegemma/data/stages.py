"""The per-repository work of the pipeline, run by local processes or Ray tasks.

`clean_repository`: load, filter, redact PII, decontaminate and sign (content hash + MinHash) one
repository. `repository_samples`: order the surviving files, apply FIM and tokenize. Each writes its
result under the work directory atomically, named by the repository key, so a part either exists
whole or not at all: that is what makes a run resumable.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from codegemma.data.atomic import write_bytes
from codegemma.data.decontam import load_decontaminator
from codegemma.data.dedup import content_hash, minhash
from codegemma.data.documents import Document
from codegemma.data.filters import drop_reason
from codegemma.data.ordering import order_files
from codegemma.data.pii import redact
from codegemma.data.recipe import DataRecipe
from codegemma.data.repo_graph import dependency_graph
from codegemma.data.samples import SampleEncoder, load_tokenizer, repository_pieces, sample_rng
from codegemma.data.sources import RepoRef, load_repository
from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS


def clean_path(work: Path, key: str) -> Path:
    return work / "clean" / f"{key}.json.gz"


def samples_path(work: Path, key: str) -> Path:
    return work / "samples" / f"{key}.npz"


def read_json_gz(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _write_json_gz(path: Path, obj: dict) -> None:
    # mtime=0: the same content gives the same bytes, so resumed and fresh runs compare equal
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
        f.write(json.dumps(obj, sort_keys=True).encode("utf-8"))
    write_bytes(path, buffer.getvalue())


@lru_cache(maxsize=2)
def _decontaminator(cfg):
    return load_decontaminator(cfg.humaneval_path if cfg.humaneval else None, cfg.mbpp, cfg.ngram, cfg.min_chars,
                               use_humaneval=cfg.humaneval)


def clean_repository(ref: RepoRef, kind: str, recipe: DataRecipe, work: Path) -> dict:
    """Stage 1 for one repository; returns its statistics (also stored in the part)."""
    repo = load_repository(ref)
    decontaminator = _decontaminator(recipe.decontamination) if recipe.decontamination.enabled else None
    stats = {"files_in": 0, "bytes_in": 0, "files_kept": 0, "bytes_kept": 0, "dropped": Counter(),
             "pii": Counter(), "languages_in": defaultdict(lambda: [0, 0]), "languages_dropped": defaultdict(Counter)}
    kept, signatures, decontaminated = [], {}, []
    for doc in repo.documents:
        language = doc.language or "unknown"
        stats["files_in"] += 1
        stats["bytes_in"] += doc.size
        stats["languages_in"][language][0] += 1
        stats["languages_in"][language][1] += doc.size
        if kind == "code":
            reason = drop_reason(doc, recipe.filters)
        else:
            reason = "empty" if not doc.content.strip() else None
        if reason is None and decontaminator is not None:
            hit = decontaminator.check(doc.content)
            if hit is not None:
                reason = "decontaminated"
                decontaminated.append({"repo": repo.name, "path": doc.path, **hit.to_dict()})
        if reason is not None:
            stats["dropped"][reason] += 1
            stats["languages_dropped"][language][reason] += 1
            continue
        signature = minhash(doc.content, recipe.dedup.num_perm, recipe.dedup.ngram, recipe.dedup.seed) \
            if recipe.dedup.near else None
        signatures[doc.path] = {"exact": content_hash(doc.content),
                                "minhash": signature.tolist() if signature is not None else None}
        if recipe.pii:
            doc.content, counts = redact(doc.content, doc.path)
            stats["pii"].update(counts)
        kept.append(doc.to_dict())
        stats["files_kept"] += 1
        stats["bytes_kept"] += doc.size
    stats = json.loads(json.dumps(stats))  # Counters and defaultdicts to plain dicts
    stats["decontaminated"] = decontaminated
    part = {"key": repo.key, "source": repo.source, "name": repo.name, "kind": kind, "license": repo.license,
            "stars": max((d.stars for d in repo.documents), default=0),
            "forks": max((d.forks for d in repo.documents), default=0),
            "documents": kept, "signatures": signatures, "stats": stats}
    _write_json_gz(clean_path(work, repo.key), part)
    return stats


@lru_cache(maxsize=2)
def _encoder(spec: str, fim_sentinels_from: tuple[str, ...] = ()) -> SampleEncoder:
    tokenizer = load_tokenizer(spec, fim_sentinels_from=fim_sentinels_from)
    missing = [s for s in CODEGEMMA_SENTINELS.all() if tokenizer.token_to_id(s) is None]
    if missing:  # a Gemma (not CodeGemma) vocabulary
        raise CodegemmaError(f"tokenizer {spec} has no {', '.join(missing)}: set the recipe's fim_sentinels_from "
                             f"to four of its unused tokens (e.g. <unused60>, ..., <unused63>) to spell them")
    return SampleEncoder(tokenizer)


def recipe_decontaminator(recipe: DataRecipe):
    return _decontaminator(recipe.decontamination)


def recipe_encoder(recipe: DataRecipe) -> SampleEncoder:
    return _encoder(recipe.tokenizer, tuple(recipe.fim_sentinels_from))


def repository_samples(key: str, dropped_files: list[str], recipe: DataRecipe, work: Path) -> dict:
    """Stage 3 for one repository: ordered, FIM-transformed, tokenized samples."""
    part = read_json_gz(clean_path(work, key))
    drop = set(dropped_files)
    docs = [Document.from_dict(d) for d in part["documents"] if d["path"] not in drop]
    encoder = recipe_encoder(recipe)
    rng = sample_rng(recipe.seed, key)
    stats = {"files": 0, "tokens": 0, "fim_psm": 0, "fim_spm": 0, "languages_tokens": Counter()}
    samples: list[np.ndarray] = []
    included: list[str] = []
    if part["kind"] == "code" and docs:
        by_path = {d.path: d for d in docs}
        graph = dependency_graph({d.path: (d.language, d.content) for d in docs}, recipe.packing.top_lines)
        order = order_files(graph, recipe.packing.order, seed=rng.randrange(2**31))
        pieces = repository_pieces([(p, by_path[p].content) for p in order], rng, recipe.fim)
        encoded = []
        for path, file_pieces in zip(order, pieces):
            ids = encoder.encode_file(file_pieces)
            encoded.append(ids)
            stats["languages_tokens"][by_path[path].language or "unknown"] += len(ids)
            for i, piece in enumerate(file_pieces):  # a chunked file holds several FIM examples
                if piece == CODEGEMMA_SENTINELS.prefix:
                    after = file_pieces[i + 1]
                    stats["fim_spm" if after == CODEGEMMA_SENTINELS.suffix else "fim_psm"] += 1
        samples = encoder.repository(encoded, recipe.seq_len)
        included = order
    else:
        for doc in docs:
            sample = encoder.text(doc.content)
            samples.append(sample)
            included.append(doc.path)
            stats["languages_tokens"][doc.language or "text"] += len(sample) - 2
    stats["files"] = len(included)
    stats["tokens"] = int(sum(len(s) for s in samples))
    stats["languages_tokens"] = dict(stats["languages_tokens"])
    lengths = np.asarray([len(s) for s in samples], dtype=np.int64)
    tokens = np.concatenate(samples) if samples else np.zeros(0, dtype=np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, tokens=tokens.astype(np.int32), lengths=lengths,
             files=np.asarray(json.dumps({"repo": part["name"], "source": part["source"], "files": included,
                                         "stats": stats})))
    write_bytes(samples_path(work, key), buffer.getvalue())
    return stats


def load_samples(work: Path, key: str) -> tuple[list[np.ndarray], dict]:
    with np.load(samples_path(work, key)) as data:
        tokens, lengths = data["tokens"], data["lengths"]
        manifest = json.loads(str(data["files"]))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [tokens[bounds[i]: bounds[i + 1]] for i in range(len(lengths))], manifest
