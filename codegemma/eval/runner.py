"""Run one task end to end: self-validate, generate in batches, execute, score, save every sample.

    run_eval(task, generator, settings, out_dir) -> summary dict

The model enters only through a `Generator` (see codegemma.eval.generation): a profile, an
`encode(prompt) -> ids` and one function `generate(list_of_prompt_ids, GenerationSettings) -> texts`,
so the pipeline is tested with canned completions and no model.

Files in `out_dir`:
    run.json          the settings; a resumed run must use the same ones
    validation.json   canonical/wrong self-check of this problem set (computed once)
    samples.jsonl     one record per sample, appended as soon as it is judged; on restart every
                      (task_id, sample) already there is skipped, so an interrupted run resumes
    summary.json      the scores (written by the caller through codegemma.eval.report)

Tasks that judge many samples cheaper together (BabelCode batches javac/kotlinc compiles) offer
`check_many(problems, completions) -> outcomes`; the runner then hands them whole batches, in
self-validation and in the evaluation loop, and otherwise calls `check` once per sample.

The harness refuses to score when a deliberately wrong completion passes (execution is not
really happening) or when a canonical solution fails (the harness, not the model, is broken).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from codegemma.errors import CodegemmaError
from codegemma.eval.metrics import edit_similarity, exact_match, pass_at_k
from codegemma.eval.task import INFILLING, Outcome, Problem, Task


@dataclass(frozen=True)
class GenerationSettings:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 8
    stop_strings: tuple[str, ...] = ()

    def identity(self) -> dict:
        """What must not change between an interrupted run and its resumption."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("stop_strings")
        return d


@dataclass
class Generator:
    """The model side: how to turn a task prompt into ids and ids into completions."""

    name: str
    profile: Any
    encode: Callable[[str | list[str]], list[int]]
    generate: Callable[[list[list[int]], GenerationSettings], list[str]]
    info: dict = field(default_factory=dict)
    count_tokens: Callable[[str], int] | None = None  # tokens of a text without <bos> (prompt budgets)


class HarnessInvalid(CodegemmaError):
    """Self-validation failed: scores from this harness would be meaningless."""


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prompt_text(prompt: str | list[str]) -> str:
    return prompt if isinstance(prompt, str) else "".join(prompt)


# ---------------------------------------------------------------- judging


def judge(task: Task, problems: Sequence[Problem], completions: Sequence[str], pool: ThreadPoolExecutor
          ) -> list[Outcome]:
    """Outcomes in input order: one `check_many` call where the task batches, else `check` in the pool."""
    check_many = getattr(task, "check_many", None)
    if callable(check_many):
        outcomes = list(check_many(list(problems), list(completions)))
        if len(outcomes) != len(problems):
            raise RuntimeError(f"{task.name}: check_many returned {len(outcomes)} outcomes for "
                               f"{len(problems)} completions")
        return outcomes
    return list(pool.map(task.check, problems, completions))


# ---------------------------------------------------------------- self-validation


def validate(task: Task, problems: Sequence[Problem], workers: int) -> dict:
    """Run every canonical completion (must pass) and every wrong one (must fail)."""
    jobs: list[tuple[str, Problem, str]] = []
    for p in problems:
        canonical = task.canonical(p)
        if canonical is not None:
            jobs.append(("canonical", p, canonical))
        jobs.append(("wrong", p, task.wrong(p)))
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = judge(task, [p for _, p, _ in jobs], [c for _, _, c in jobs], pool)
    canonical_failed = [(p.task_id, o.error or o.status) for (kind, p, _), o in zip(jobs, outcomes)
                        if kind == "canonical" and not o.passed]
    wrong_passed = [p.task_id for (kind, p, _), o in zip(jobs, outcomes) if kind == "wrong" and o.passed]
    n_canonical = sum(kind == "canonical" for kind, _, _ in jobs)
    return {
        "problems": len(problems),
        "canonical_checked": n_canonical,
        "canonical_passed": n_canonical - len(canonical_failed),
        "canonical_skipped": len(problems) - n_canonical,
        "canonical_failed": canonical_failed,
        "wrong_checked": len(problems),
        "wrong_passed": wrong_passed,
        "seconds": round(time.perf_counter() - start, 3),
        "isolation": outcomes[0].isolation if outcomes else [],
    }


def require_valid(report: dict, task_name: str) -> None:
    if report["wrong_passed"]:
        raise HarnessInvalid(f"{task_name}: a deliberately wrong completion passed for {len(report['wrong_passed'])} "
                             f"problem(s), e.g. {report['wrong_passed'][0]}: code is not really being executed")
    if report["canonical_failed"]:
        task_id, error = report["canonical_failed"][0]
        raise HarnessInvalid(f"{task_name}: {len(report['canonical_failed'])} canonical solution(s) fail, "
                             f"e.g. {task_id}: {error}")


def _problem_set_key(problems: Sequence[Problem]) -> str:
    return hashlib.sha256("\n".join(p.task_id for p in problems).encode()).hexdigest()[:16]


def validated(task: Task, problems: Sequence[Problem], workers: int, out_dir: Path) -> dict:
    """The self-check of this problem set, computed once per output directory. A failed check is
    not reused: it is run again, so that a passing fault (a timeout on a loaded machine) does not
    block the directory for good."""
    path = out_dir / "validation.json"
    key = _problem_set_key(problems)
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key and not cached.get("canonical_failed") and not cached.get("wrong_passed"):
            return cached
    report = {"key": key, **validate(task, problems, workers)}
    write_json(path, report)
    return report


# ---------------------------------------------------------------- samples


def read_samples(path: Path) -> list[dict]:
    """Records already judged; a line cut short by an interrupt is dropped (it is redone)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _record(task: Task, problem: Problem, index: int, prompt: str, raw: str, completion: str,
            outcome: Outcome, generate_seconds: float) -> dict:
    # seconds: execution time; generate_seconds: this sample's share of its batch's generation time
    record = {"task": task.name, "task_id": problem.task_id, "sample": index, "prompt": prompt,
              "raw": raw, "completion": completion, "passed": outcome.passed, "status": outcome.status,
              "error": outcome.error, "seconds": round(outcome.seconds, 4),
              "generate_seconds": round(generate_seconds, 4), "isolation": outcome.isolation}
    reference = task.reference(problem)
    if reference is not None:
        record["exact_match"] = exact_match(completion, reference)
        record["edit_similarity"] = round(edit_similarity(completion, reference), 4)
    return record


def _cut_at(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def _batches(pending: list[tuple[Problem, int]], size: int, task: Task):
    """(index of the first sample, samples) runs of up to `size` consecutive pending samples that
    share their stop strings: the engine applies one set to a whole batch, and a C# problem's
    `\n    }\n` would cut a C++ answer at its first inner block."""
    start = 0
    while start < len(pending):
        stops = task.stop_strings(pending[start][0])
        end = start + 1
        while end < min(start + size, len(pending)) and task.stop_strings(pending[end][0]) == stops:
            end += 1
        yield start, pending[start:end]
        start = end


def _check_run_settings(out_dir: Path, run_info: dict) -> None:
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        for key in ("task", "model", "settings", "limit", "timeout"):
            # a run from before timeouts were recorded has none to compare
            if previous.get(key, run_info[key]) != run_info[key]:
                raise CodegemmaError(f"{out_dir} holds a run with a different {key} ({previous.get(key)!r}); "
                                     "resume with the same options or choose another --out")
    write_json(path, run_info)


def run_eval(task: Task, generator: Generator, settings: GenerationSettings, out_dir: str | os.PathLike,
             limit: int | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Evaluate `generator` on `task`; returns the summary (also written to out_dir/summary.json)."""
    if settings.n > 1 and settings.temperature == 0:
        raise CodegemmaError(f"--n {settings.n} with greedy decoding gives {settings.n} identical samples; "
                             "set --temperature > 0 or --n 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    problems = task.problems(limit)
    if not problems:
        raise CodegemmaError(f"task {task.name} has no problems (limit={limit})")
    prompts = {p.task_id: task.prompt(p, generator.profile) for p in problems}  # ModelCannotInfill here
    _check_run_settings(out, {"task": task.name, "model": generator.name, "settings": settings.identity(),
                              "limit": limit, "timeout": task.timeout, "generator": generator.info})
    validation = validated(task, problems, workers, out)
    require_valid(validation, task.name)

    samples_path = out / "samples.jsonl"
    done = {(r["task_id"], r["sample"]) for r in read_samples(samples_path)}
    pending = [(p, i) for p in problems for i in range(settings.n) if (p.task_id, i) not in done]
    profile_stops = tuple(getattr(generator.profile, "stop_texts", ()) or ())
    encoded = {p.task_id: generator.encode(prompts[p.task_id]) for p, _ in pending}

    start = time.perf_counter()
    generate_s = 0.0
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc=f"{task.name} ({generator.name})", unit="sample")
    batched = callable(getattr(task, "check_many", None))
    # Each future judges a list of samples: a whole generation batch where the task batches, else one.
    futures: list[tuple[Future, list[tuple[Problem, int, str, str]], float]] = []
    with ThreadPoolExecutor(workers) as pool, open(samples_path, "a", encoding="utf-8") as sink:

        def drain(block: bool) -> None:
            nonlocal futures
            keep = []
            for item in futures:
                future, entries, gen_s = item
                if not block and not future.done():
                    keep.append(item)
                    continue
                outcomes = future.result()
                if len(outcomes) != len(entries):
                    raise RuntimeError(f"{task.name}: check_many returned {len(outcomes)} outcomes for "
                                       f"{len(entries)} completions")
                for (problem, index, raw, completion), outcome in zip(entries, outcomes):
                    record = _record(task, problem, index, prompt_text(prompts[problem.task_id]), raw,
                                     completion, outcome, gen_s)
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                if bar is not None:
                    bar.update(len(entries))
            futures = keep

        try:
            for b, batch in _batches(pending, settings.batch_size, task):
                stops = tuple(task.stop_strings(batch[0][0])) + profile_stops
                batch_settings = GenerationSettings(**{**asdict(settings), "seed": settings.seed + b,
                                                       "stop_strings": stops})
                t0 = time.perf_counter()
                texts = generator.generate([encoded[p.task_id] for p, _ in batch], batch_settings)
                batch_s = time.perf_counter() - t0
                generate_s += batch_s
                if len(texts) != len(batch):
                    raise RuntimeError(f"generator returned {len(texts)} completions for {len(batch)} prompts")
                entries = [(problem, index, raw, task.postprocess(problem, _cut_at(raw, profile_stops)))
                           for (problem, index), raw in zip(batch, texts)]
                if batched:
                    future = pool.submit(task.check_many, [e[0] for e in entries], [e[3] for e in entries])
                    futures.append((future, entries, batch_s / len(batch)))
                else:
                    for entry in entries:
                        futures.append((pool.submit(lambda e: [task.check(e[0], e[3])], entry), [entry],
                                        batch_s / len(batch)))
                drain(block=False)
        finally:
            drain(block=True)  # on an interrupt too: what was generated is judged and kept
    if bar is not None:
        bar.close()

    summary = summarize(task, problems, read_samples(samples_path), settings)
    summary.update({"model": generator.name, "generator": generator.info, "validation": validation,
                    "wall_seconds_this_run": round(time.perf_counter() - start, 2),
                    "generate_seconds_this_run": round(generate_s, 2), "workers": workers,
                    "resumed_samples": len(done)})
    write_json(out / "summary.json", summary)
    return summary


def summarize(task: Task, problems: Sequence[Problem], records: list[dict], settings: GenerationSettings) -> dict:
    """Scores over the problem set from the saved samples."""
    wanted = {p.task_id for p in problems}
    by_problem: dict[str, list[dict]] = {}
    for r in records:
        if r["task_id"] in wanted and r["sample"] < settings.n:
            by_problem.setdefault(r["task_id"], []).append(r)
    missing = sorted(wanted - set(by_problem))
    if missing:
        raise CodegemmaError(f"{task.name}: {len(missing)} problem(s) have no samples yet, e.g. {missing[0]}")
    flat = [r for rs in by_problem.values() for r in rs]
    statuses: dict[str, int] = {}
    for r in flat:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = {
        "task": task.name,
        "kind": task.kind,
        "problems": len(problems),
        "samples": len(flat),
        "n": settings.n,
        "temperature": settings.temperature,
        "max_new_tokens": settings.max_new_tokens,
        "timeout": task.timeout,
        "scores": pass_at_k({k: [r["passed"] for r in v] for k, v in by_problem.items()}),
        "statuses": statuses,
        "execution_seconds": round(sum(r["seconds"] for r in flat), 2),
        "generate_seconds": round(sum(r.get("generate_seconds", 0.0) for r in flat), 2),
    }
    scores_by_language = getattr(task, "scores_by_language", None)
    if callable(scores_by_language):  # multilingual tasks: per-language pass@1 (percent), Table 4's rows
        summary["dataset"] = getattr(task, "dataset", None)
        summary["by_language"] = scores_by_language(flat)
    if task.kind == INFILLING:
        summary["scores"]["exact_match"] = sum(r.get("exact_match", False) for r in flat) / len(flat)
        summary["scores"]["edit_similarity"] = sum(r.get("edit_similarity", 0.0) for r in flat) / len(flat)
    return summary
