"""Keep only questions whose translated tests mean what the original tests mean.

Typing can change a problem: `any_int(2.0, 3.0, 1.0)` is not `any_int(2, 3, 1)` when the task is
about telling ints from floats, and `str(result)` of a tuple is not that of a list. So each
question's translated Python tests run on the dataset's reference solution, and so do the
original tests; a question is kept only when both pass. Verdicts are cached on disk by content.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from codegemma.eval import sandbox
from codegemma.eval.babelcode.build import Builder, default_cache_dir
from codegemma.eval.babelcode.execute import evaluate_programs
from codegemma.eval.babelcode.languages import LANGUAGES
from codegemma.eval.babelcode.languages.python import reference_completion
from codegemma.eval.babelcode.schema import Dropped, Question

TIMEOUT = 20.0


def _key(q: Question) -> str:
    text = repr((q.qid, q.params, q.returns, q.tests, q.reference, q.original_test))
    return hashlib.sha256(text.encode()).hexdigest()


def original_passes(q: Question) -> bool:
    """The dataset's own tests on its own reference solution (False for MBPP's few broken tasks)."""
    res = sandbox.run(["python3", "-I", "-S", "-B", "main.py"],
                      files={"main.py": q.reference + "\n\n" + q.original_test}, timeout=TIMEOUT)
    return res.ok


def agreement(questions: list[Question], cache_dir: str | Path | None = None) -> dict[str, dict]:
    """Per question: did the original tests pass, what did the translated tests say (cached)."""
    cache = Path(cache_dir or default_cache_dir()) / "verified"
    results: dict[str, dict] = {}
    todo = []
    for q in questions:
        path = cache / f"{_key(q)}.json"
        if path.is_file():
            results[q.qid] = json.loads(path.read_text())
        else:
            todo.append(q)
    if todo:
        python = LANGUAGES["python"]
        verdicts = evaluate_programs(Builder(python, cache_dir), [python.program(q, reference_completion(q)) for q in todo],
                                     [len(q.tests) for q in todo], timeout=TIMEOUT)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            originals = list(pool.map(original_passes, todo))
        cache.mkdir(parents=True, exist_ok=True)
        for q, v, original in zip(todo, verdicts, originals):
            entry = {"original": original, "translated": v.status, "detail": v.detail[:300]}
            results[q.qid] = entry
            if v.status != "timeout":
                tmp = cache / f".{_key(q)}.tmp"
                tmp.write_text(json.dumps(entry))
                os.replace(tmp, cache / f"{_key(q)}.json")
    return results


def agreeing(items: list[Question | Dropped], cache_dir: str | Path | None = None) -> list[Question | Dropped]:
    """`items` with every question whose translation disagrees with the original replaced by a Dropped."""
    questions = [q for q in items if isinstance(q, Question)]
    verdicts = agreement(questions, cache_dir)
    out: list[Question | Dropped] = []
    for item in items:
        if isinstance(item, Dropped):
            out.append(item)
            continue
        v = verdicts[item.qid]
        if not v["original"]:
            out.append(Dropped(item.qid, "original tests fail on the reference solution"))
        elif v["translated"] != "passed":
            out.append(Dropped(item.qid, f"translated tests disagree with the original: {v['translated']}"))
        else:
            out.append(item)
    return out
