"""Data pipeline benchmark: end-to-end MB/s on the demo corpus, and MinHash near-dedup against
datatrove's MinHash dedup on the same files in the same run (throughput and cluster agreement).

    python bench/data.py [--max-mb 35] [--workers 2] [--out bench/results/data.json]

Peer: datatrove (huggingface/datatrove) MinhashDedupSignature/Buckets/Cluster/Filter with its default
MinhashConfig (5-grams, 14 buckets x 8 hashes), on LocalPipelineExecutor with the same worker count.
Ours: 256-permutation datasketch MinHash of 5-gram code-token shingles, LSH at 0.7, same workers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def corpus_files(corpus: Path) -> list[tuple[str, str]]:
    from codegemma.data.sources import SourceSpec, list_repositories, load_repository

    files = []
    for ref in list_repositories(SourceSpec(name="bench", path=str(corpus))):
        for doc in load_repository(ref).documents:
            if doc.language == "Python":
                files.append((f"{doc.repo}/{doc.path}", doc.content))
    return files


def _signatures(texts: list[str]):
    from codegemma.data.dedup import minhash

    return [minhash(t) for t in texts]


def ours(files, workers: int) -> tuple[float, list[set[str]]]:
    from codegemma.data.dedup import DedupConfig, Item, near_clusters

    start = time.perf_counter()
    chunks = [files[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        sigs = list(pool.map(_signatures, [[t for _, t in c] for c in chunks]))
    items = [Item(name, "", sig) for chunk, chunk_sigs in zip(chunks, sigs) for (name, _), sig in zip(chunk, chunk_sigs)]
    clusters = near_clusters(items, DedupConfig())
    return time.perf_counter() - start, [set(c) for c in clusters]


def datatrove(files, workers: int, tmp: Path) -> tuple[float, list[set[str]]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    data = tmp / "input"
    data.mkdir(parents=True)
    for k in range(workers):  # one input file per task, prepared before timing
        with open(data / f"part{k}.jsonl", "w") as f:
            for name, text in files[k::workers]:
                f.write(json.dumps({"id": name, "text": text}) + "\n")
    config = MinhashConfig()
    stages = [
        LocalPipelineExecutor([JsonlReader(str(data)), MinhashDedupSignature(str(tmp / "sigs"), config=config)],
                              tasks=workers, workers=workers, logging_dir=str(tmp / "log1")),
        LocalPipelineExecutor([MinhashDedupBuckets(str(tmp / "sigs"), str(tmp / "buckets"), config=config)],
                              tasks=config.num_buckets, workers=workers, logging_dir=str(tmp / "log2")),
        LocalPipelineExecutor([MinhashDedupCluster(str(tmp / "buckets"), str(tmp / "remove"), config=config,
                                                   save_cluster_id=True)], tasks=1, logging_dir=str(tmp / "log3")),
        LocalPipelineExecutor([JsonlReader(str(data)), MinhashDedupFilter(str(tmp / "remove"), load_cluster_ids=True,
                                                                          exclusion_writer=JsonlWriter(str(tmp / "removed"))),
                               JsonlWriter(str(tmp / "kept"))], tasks=workers, workers=workers, logging_dir=str(tmp / "log4")),
    ]
    start = time.perf_counter()
    for stage in stages:
        stage.run()
    seconds = time.perf_counter() - start
    import gzip

    groups: dict[int, set[str]] = {}
    for path in itertools.chain((tmp / "kept").rglob("*.jsonl*"), (tmp / "removed").rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                cid = row.get("metadata", {}).get("minhash_cluster_id", -1)
                if cid != -1:
                    groups.setdefault(cid, set()).add(row["id"])
    return seconds, [g for g in groups.values() if len(g) > 1]


def pairs(clusters: list[set[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for c in clusters for p in itertools.combinations(c, 2)}


def end_to_end(corpus: Path, workers: int, tmp: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from codegemma.data.pipeline import build
    from codegemma.data.recipe import recipe_from_dict

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|file_separator|>"]
    sample = [p.read_text(errors="replace") for p in sorted(corpus.rglob("*.py"))[:300]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sample, trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp / "tokenizer.json"))
    mbpp = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mbpp" / "mbpp.jsonl"
    recipe = recipe_from_dict({"name": "bench", "out_dir": str(tmp / "out"), "tokenizer": str(tmp / "tokenizer.json"),
                               "seq_len": 2048, "workers": workers,
                               "decontamination": {"mbpp": str(mbpp) if mbpp.is_file() else None},
                               "sources": [{"name": "demo", "path": str(corpus)}]})
    start = time.perf_counter()
    report = build(recipe, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "mb_in": round(report["stages"]["bytes_in"] / 1e6, 2),
            "mb_per_s": round(report["stages"]["bytes_in"] / 1e6 / seconds, 3), "stage_seconds": report["timings_s"],
            "files_in": report["stages"]["files_in"], "files_out": report["stages"]["files_out"],
            "tokens": report["stages"]["sample_tokens"], "dedup": report["stages"]["dedup"],
            "dropped": report["stages"]["dropped_by_filter"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mb", type=float, default=35.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corpus", help="an existing repository collection (default: build the demo corpus)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)

    from codegemma.data.demo_corpus import build_demo_corpus

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        corpus = Path(args.corpus) if args.corpus else tmp / "corpus"
        if not args.corpus:
            build_demo_corpus(corpus, args.max_mb, include_tests=True)
        files = corpus_files(corpus)
        mb = sum(len(t.encode()) for _, t in files) / 1e6
        our_s, our_clusters = ours(files, args.workers)
        try:
            dt_s, dt_clusters = datatrove(files, args.workers, tmp / "dt")
        except ImportError as exc:
            print(f"datatrove unavailable ({exc}); pip install datatrove spacy orjson 'xxhash<4'", file=sys.stderr)
            dt_s, dt_clusters = None, []
        a, b = pairs(our_clusters), pairs(dt_clusters)
        in_a, in_b = set().union(*our_clusters) if our_clusters else set(), set().union(*dt_clusters) if dt_clusters else set()
        result = {
            "corpus": {"python_files": len(files), "mb": round(mb, 2), "workers": args.workers},
            "near_dedup": {
                "ours": {"seconds": round(our_s, 2), "mb_per_s": round(mb / our_s, 2), "clusters": len(our_clusters),
                         "files_in_clusters": len(in_a)},
                "datatrove": {"seconds": round(dt_s, 2) if dt_s else None,
                              "mb_per_s": round(mb / dt_s, 2) if dt_s else None, "clusters": len(dt_clusters),
                              "files_in_clusters": len(in_b)},
                "speedup": round(dt_s / our_s, 2) if dt_s else None,
                "agreement": {"shared_pairs": len(a & b), "our_pairs": len(a), "datatrove_pairs": len(b),
                              "pair_jaccard": round(len(a & b) / len(a | b), 3) if a | b else 1.0,
                              "file_jaccard": round(len(in_a & in_b) / len(in_a | in_b), 3) if in_a | in_b else 1.0},
            },
        }
        if not args.skip_end_to_end:
            result["end_to_end"] = end_to_end(corpus, args.workers, tmp)
    nd = result["near_dedup"]
    print(f"corpus: {len(files)} Python files, {mb:.1f} MB, {args.workers} workers")
    print(f"{'near dedup':<14}{'seconds':>10}{'MB/s':>8}{'clusters':>10}{'files':>8}")
    for name in ("ours", "datatrove"):
        r = nd[name]
        print(f"{name:<14}{r['seconds'] or float('nan'):>10.2f}{r['mb_per_s'] or float('nan'):>8.2f}{r['clusters']:>10}"
              f"{r['files_in_clusters']:>8}")
    print(f"speedup vs datatrove: {nd['speedup']}x; agreement: {nd['agreement']}")
    if "end_to_end" in result:
        e = result["end_to_end"]
        print(f"end to end: {e['mb_in']} MB in {e['seconds']} s = {e['mb_per_s']} MB/s; stages {e['stage_seconds']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
