"""`codegemma data build`: the whole pipeline, resumable, on local cores or Ray.

Stages and what each leaves in <out_dir>/work (a stage's part exists whole or not at all):
  1. list      every source's repositories -> repos.json (streamed repositories kept under inline/)
  2. clean     per repository: filters, decontamination, MinHash, PII -> clean/<key>.json.gz
  3. dedup     global: exact + near duplicates, repositories then files -> dedup.json
  4. samples   per repository: packing order, FIM, tokens -> samples/<key>.npz
  5. shards    global: train/eval split, mixture, best-fit packing -> <out_dir>/{train,eval}, report
A killed run restarts where it stopped: parts already present are not redone, and the result is the
same as an uninterrupted run's because every random choice is seeded by (recipe seed, repository).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from codegemma.data import stages
from codegemma.data.atomic import check_replaceable, publish_dir, staging_dir, write_json, write_text
from codegemma.data.dedup import Item, deduplicate, repository_item
from codegemma.data.documents import repo_key
from codegemma.data.executors import make_executor
from codegemma.data.mixture import plan_mixture, realised_shares
from codegemma.data.packing import pack
from codegemma.data.recipe import DataRecipe, missing_inputs
from codegemma.data.shards import ShardWriter, is_shard_dir
from codegemma.data.sources import RepoRef, list_repositories, store_repository
from codegemma.errors import CodegemmaError

# Lists the repository folders of a held-out directory (read by `codegemma.train.evaluate`).
HELDOUT_REPOSITORIES = "repositories.json"


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="repo", disable=not enabled, leave=False)


class Pipeline:
    def __init__(self, recipe: DataRecipe, progress: bool = True):
        self.recipe = recipe
        self.out = Path(recipe.out_dir)
        self.work = self.out / "work"
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:12]
        self.timings: dict[str, float] = {}
        self._executor = None

    @property
    def executor(self):
        if self._executor is None:
            self._executor = make_executor(self.recipe.executor, self.recipe.workers, self.recipe.ray_address)
        return self._executor

    # ---- bookkeeping -------------------------------------------------------------------
    def _check_fingerprint(self, fresh: bool) -> None:
        if fresh and self.work.exists():
            shutil.rmtree(self.work)
        fingerprint = json.loads(json.dumps(self.recipe.fingerprint(), default=str))
        saved = self.work / "recipe.json"
        # a run that stopped before it listed its repositories (say, at a wrong source path) did no
        # work: the corrected recipe just takes its place
        started = (self.work / "repos.json").exists()
        if saved.exists() and started:
            if json.loads(saved.read_text()) != fingerprint:
                raise CodegemmaError(f"{self.work} holds a run of a different recipe; pass --fresh to start over")
        else:
            write_json(saved, fingerprint)

    def _journal(self, stage: str, key: str) -> None:
        with open(self.work / "journal.jsonl", "a") as f:
            f.write(json.dumps({"run": self.run_id, "stage": stage, "key": key}) + "\n")

    def _timed(self, stage: str, start: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    # ---- stages ------------------------------------------------------------------------
    def list_repositories(self) -> list[dict]:
        listing = self.work / "repos.json"
        if listing.exists():
            return json.loads(listing.read_text())
        start = time.perf_counter()
        entries = []
        for spec in self.recipe.sources:
            for ref in list_repositories(spec):
                key = repo_key(ref.source, ref.name)
                if ref.inline is not None:
                    stored = self.work / "inline" / f"{key}.json.gz"
                    store_repository(ref.inline, stored)
                    ref = RepoRef(ref.source, ref.name, "stored", str(stored), ref.max_file_bytes)
                entries.append({"key": key, "source": ref.source, "name": ref.name, "kind": ref.kind,
                                "location": ref.location, "max_file_bytes": ref.max_file_bytes, "sample_kind": spec.kind})
        keys = [e["key"] for e in entries]
        if len(set(keys)) != len(keys):
            raise CodegemmaError("two repositories of one source have the same name; rename one")
        if keys and all(self.is_eval(k) for k in keys):  # checked before the listing is kept: nothing done yet
            raise CodegemmaError(f"eval_fraction {self.recipe.eval_fraction} holds out all {len(keys)} of the recipe's "
                                 "repositories (whole repositories are held out, chosen by a hash of their names), "
                                 "leaving nothing to train on: set eval_fraction = 0, or build from more repositories")
        write_json(listing, entries)
        self._timed("list", start)
        return entries

    def clean(self, entries: list[dict]) -> None:
        start = time.perf_counter()
        todo = [e for e in entries if not stages.clean_path(self.work, e["key"]).exists()]
        tasks = [(RepoRef(e["source"], e["name"], e["kind"], e["location"], e["max_file_bytes"]), e["sample_kind"],
                  self.recipe, self.work) for e in todo]
        with _progress(len(tasks), "clean", self.progress) as bar:
            for task, _ in self.executor.run(stages.clean_repository, tasks):
                self._journal("clean", repo_key(task[0].source, task[0].name))
                bar.update()
        self._timed("clean", start)

    def dedup(self, entries: list[dict]) -> dict:
        path = self.work / "dedup.json"
        if path.exists():
            return json.loads(path.read_text())
        start = time.perf_counter()
        cfg = self.recipe.dedup
        repo_items, file_items = [], {}
        for e in entries:
            part = stages.read_json_gz(stages.clean_path(self.work, e["key"]))
            files = []
            for doc in part["documents"]:
                sig = part["signatures"][doc["path"]]
                signature = np.asarray(sig["minhash"], dtype=np.uint32) if sig["minhash"] is not None else None
                files.append((doc["path"], sig["exact"], signature))
                file_items.setdefault(e["key"], []).append(Item(
                    f"{e['key']}\t{doc['path']}", sig["exact"], signature, part["license"], part["stars"], part["forks"],
                    doc["size"], (part["source"], part["name"], doc["path"])))
            if part["kind"] == "code" and files:
                repo_items.append(repository_item(e["key"], files, part["license"], part["stars"], part["forks"],
                                                  sum(d["size"] for d in part["documents"]),
                                                  (part["source"], part["name"])))
        result = {"dropped_repos": {}, "dropped_files": {}, "clusters": {"repository": 0, "file": 0},
                  "counts": {}}
        if cfg.repository_level and (cfg.exact or cfg.near):
            repo_result = deduplicate(repo_items, cfg)
            result["dropped_repos"] = {k: list(v) for k, v in sorted(repo_result.dropped.items())}
            result["clusters"]["repository"] = len(repo_result.clusters)
        survivors = [it for key, items in sorted(file_items.items()) if key not in result["dropped_repos"]
                     for it in items]
        file_result = deduplicate(survivors, cfg) if (cfg.exact or cfg.near) else None
        if file_result is not None:
            for item_id, (reason, survivor) in sorted(file_result.dropped.items()):
                key, file_path = item_id.split("\t", 1)
                result["dropped_files"].setdefault(key, {})[file_path] = [reason, survivor.replace("\t", ":")]
            result["clusters"]["file"] = len(file_result.clusters)
        counts = {"repository_exact": 0, "repository_near": 0, "file_exact": 0, "file_near": 0,
                  "files_in_dropped_repositories": sum(len(file_items.get(k, [])) for k in result["dropped_repos"])}
        for reason, _ in result["dropped_repos"].values():
            counts["repository_exact" if reason == "exact_duplicate" else "repository_near"] += 1
        for files in result["dropped_files"].values():
            for reason, _ in files.values():
                counts["file_exact" if reason == "exact_duplicate" else "file_near"] += 1
        result["counts"] = counts
        write_json(path, result)
        self._timed("dedup", start)
        return result

    def samples(self, entries: list[dict], dedup: dict) -> None:
        start = time.perf_counter()
        todo = [e for e in entries if e["key"] not in dedup["dropped_repos"]
                and not stages.samples_path(self.work, e["key"]).exists()]
        tasks = [(e["key"], sorted(dedup["dropped_files"].get(e["key"], {})), self.recipe, self.work) for e in todo]
        with _progress(len(tasks), "samples", self.progress) as bar:
            for task, _ in self.executor.run(stages.repository_samples, tasks):
                self._journal("samples", task[0])
                bar.update()
        self._timed("samples", start)

    def is_eval(self, key: str) -> bool:
        if self.recipe.eval_fraction <= 0:
            return False
        digest = hashlib.sha256(f"{self.recipe.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.recipe.eval_fraction

    def shards(self, entries: list[dict], dedup: dict) -> dict:
        start = time.perf_counter()
        encoder = stages.recipe_encoder(self.recipe)
        weights = {s.name: s.weight for s in self.recipe.sources}
        splits = {"train": [], "eval": []}
        for e in entries:
            if e["key"] not in dedup["dropped_repos"]:
                splits["eval" if self.is_eval(e["key"]) else "train"].append(e)
        summary = {}
        for split, members in splits.items():
            if not members:
                continue
            samples: dict[str, list[np.ndarray]] = {}
            manifest = []
            for e in members:
                arrays, files = stages.load_samples(self.work, e["key"])
                samples.setdefault(e["source"], []).extend(arrays)
                manifest += [[files["source"], files["repo"], p] for p in files["files"]]
            lengths = {name: [len(a) for a in arrays] for name, arrays in samples.items()}
            if not any(lengths.values()):
                continue
            plan = plan_mixture(lengths, weights, self.recipe.seed, self.recipe.mixture.total_tokens,
                                self.recipe.mixture.repeat)
            meta = {"recipe": self.recipe.name, "tokenizer": self.recipe.tokenizer,
                    "fim_sentinels_from": self.recipe.fim_sentinels_from, "seq_len": self.recipe.seq_len,
                    "vocab_size": getattr(encoder.tokenizer, "vocab_size", None), "sentinel_ids": dict(encoder.ids),
                    "split": split,
                    "bos_id": encoder.bos_id, "eos_id": encoder.eos_id, "pad_id": encoder.pad_id,
                    "fim_rate": self.recipe.fim.rate, "spm_rate": self.recipe.fim.spm_rate,
                    "fim_chunk_chars": self.recipe.fim.chunk_chars,
                    # chunks left plain run on as their file's text (shards from before wrote each
                    # chunk as a file of its own)
                    "fim_chunks_run_on": self.recipe.fim.chunk_chars > 0,
                    "fim_suffix_line_rate": self.recipe.fim.suffix_line_rate,
                    "fim_line_rate": self.recipe.fim.line_rate,
                    "fim_single_line_rate": self.recipe.fim.single_line_rate,
                    "file_order": self.recipe.packing.order, "shares": realised_shares(plan, lengths)}
            writer = ShardWriter(self.out / split, self.recipe.seq_len, self.recipe.sequences_per_shard)
            sequences = real = 0
            fill = []
            for tokens, segments, mask in pack((samples[name][i] for name, i in plan), self.recipe.seq_len,
                                               encoder.pad_id, self.recipe.packing.window):
                writer.add(tokens, segments, mask)
                sequences += 1
                real += int(mask.sum())
                fill.append(int(mask.sum()))
            meta.update({"sequences": sequences, "tokens": real, "samples": len(plan), "files": len(manifest),
                         "padding_fraction": 1 - real / max(sequences * self.recipe.seq_len, 1)})
            writer.meta = meta
            writer.close()
            summary[split] = {**meta, "fill": fill}
            write_text(self.out / f"{split}.files.json", json.dumps(manifest) + "\n")
            if split == "eval":
                self._write_heldout(members, dedup)
        self._timed("shards", start)
        return summary

    def _write_heldout(self, members: list[dict], dedup: dict) -> None:
        """Source files of the held-out repositories, for infilling evaluation on unseen code."""
        stage = staging_dir(self.out / "heldout")
        for e in members:
            part = stages.read_json_gz(stages.clean_path(self.work, e["key"]))
            dropped = dedup["dropped_files"].get(e["key"], {})
            for doc in part["documents"]:
                if part["kind"] == "code" and doc["path"] not in dropped:
                    target = stage / e["key"] / doc["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(doc["content"], encoding="utf-8")
        (stage / HELDOUT_REPOSITORIES).write_text(json.dumps(sorted(e["key"] for e in members)) + "\n")
        publish_dir(stage, self.out / "heldout")

    # ---- all ---------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Refuse a recipe whose inputs are missing or unusable before any stage runs: found by a
        later stage, the earlier ones would have written work that a corrected recipe cannot resume."""
        missing = missing_inputs(self.recipe)
        if missing:
            where = self.recipe.path or "recipe"
            raise CodegemmaError(f"{where}: " + "; ".join(f"{m} does not exist" for m in missing))
        stages.recipe_encoder(self.recipe)  # the tokenizer loads and has the FIM sentinels
        if self.recipe.decontamination.enabled:
            stages.recipe_decontaminator(self.recipe)  # the benchmark files read

    def run(self, fresh: bool = False) -> dict:
        from codegemma.data.report import build_report

        self.check_inputs()
        self.out.mkdir(parents=True, exist_ok=True)
        # the outputs a build replaces: refused now, before any work, if they are something else
        check_replaceable(self.out / "train", is_shard_dir, "a shard directory")
        check_replaceable(self.out / "eval", is_shard_dir, "a shard directory")
        check_replaceable(self.out / "heldout", lambda d: (d / HELDOUT_REPOSITORIES).is_file(),
                          "the held-out files of a build")
        self._check_fingerprint(fresh)
        entries = self.list_repositories()
        if not entries:
            raise CodegemmaError("the recipe's sources hold no repositories")
        self.clean(entries)
        dedup = self.dedup(entries)
        self.samples(entries, dedup)
        summary = self.shards(entries, dedup)
        return build_report(self, entries, dedup, summary)


def build(recipe: DataRecipe, fresh: bool = False, progress: bool = True) -> dict:
    return Pipeline(recipe, progress).run(fresh)
