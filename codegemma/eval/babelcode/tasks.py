"""BabelCode tasks for the evaluation harness: `babelcode-humaneval`, `babelcode-mbpp` (all languages
or `languages="cpp,java"`), and one task per language such as `babelcode-humaneval-cpp`.

A multi-language task's problem ids read `<language>/<dataset id>` (`cpp/HumanEval/0`), so the
per-language scores of Table 4 are grouped from one run's samples (see `report.py`).
The prompt is the translated signature and description; generation stops at the language's end
of function (a closing brace at column 0, or at the method's indentation inside a class), and the
model's own stop tokens come from its profile through the runner.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from codegemma.eval.babelcode.build import Builder
from codegemma.eval.babelcode.datasets import load
from codegemma.eval.babelcode.execute import RUN_TIMEOUT, Verdict, evaluate_programs
from codegemma.eval.babelcode.languages import LANGUAGES, parse_languages
from codegemma.eval.babelcode.languages.base import Language
from codegemma.eval.babelcode.languages.python import reference_completion
from codegemma.eval.babelcode.report import scores_from_records
from codegemma.eval.babelcode.schema import Question
from codegemma.eval.babelcode.verify import agreeing
from codegemma.eval.babelcode.translate import Translation, translate
from codegemma.eval.task import COMPLETION, Outcome, Problem, Task, register_task

DATASETS = {"humaneval": "HumanEval", "mbpp": "MBPP"}


def outcome(verdict: Verdict) -> Outcome:
    """The harness-wide Outcome; compile and runtime errors keep their kind in `error`."""
    status = {"passed": "passed", "failed": "failed", "timeout": "timeout"}.get(verdict.status, "error")
    error = verdict.detail if verdict.status in ("passed", "failed", "timeout") else \
        f"{verdict.status.replace('_', ' ')}: {verdict.detail}"
    return Outcome(verdict.passed, status, error.strip()[:500], verdict.compile_seconds + verdict.run_seconds,
                   verdict.isolation)


class BabelCodeTask(Task):
    kind = COMPLETION
    timeout = RUN_TIMEOUT

    def __init__(self, dataset: str = "humaneval", languages: str | list[str] | None = None,
                 data_path: str | None = None, cache_dir: str | None = None):
        self.dataset = dataset
        names = ",".join(languages) if isinstance(languages, (list, tuple)) else languages
        self.languages: list[Language] = parse_languages(names)
        self.name = f"babelcode-{dataset}" + ("" if len(self.languages) == len(LANGUAGES) else
                                              "-" + "-".join(l.name for l in self.languages))
        self.language = self.languages[0].name if len(self.languages) == 1 else "multi"
        self.data_path = data_path
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._translations: dict[str, Translation] | None = None
        self._problems: list[Problem] | None = None
        self._builders: dict[str, Builder] = {}
        self._lock = threading.Lock()
        self._stubs_built: set[str] = set()

    # ------------------------------------------------------------------ problems

    def translations(self) -> dict[str, Translation]:
        if self._translations is None:
            items = agreeing(load(self.dataset, self.data_path), self.cache_dir)
            self._translations = {lang.name: translate(items, lang) for lang in self.languages}
        return self._translations

    def problems(self, limit: int | None = None) -> list[Problem]:
        """Every kept problem of every language; `limit` keeps the first `limit` of each language."""
        if self._problems is None:
            self._problems = [Problem(f"{name}/{q.qid}", {"language": name, "question": q})
                              for name, t in self.translations().items() for q in t.kept]
        if limit is None:
            return list(self._problems)
        seen: dict[str, int] = {}
        out = []
        for p in self._problems:
            n = seen.get(p.data["language"], 0)
            if n < limit:
                out.append(p)
            seen[p.data["language"]] = n + 1
        return out

    @staticmethod
    def _parts(problem: Problem) -> tuple[Language, Question]:
        return LANGUAGES[problem.data["language"]], problem.data["question"]

    def prompt(self, problem: Problem, profile: Any) -> str:
        lang, q = self._parts(problem)
        return lang.prompt(q)

    def stop_strings(self, problem: Problem) -> tuple[str, ...]:
        return LANGUAGES[problem.data["language"]].stop_strings

    # ------------------------------------------------------------------ judging

    def builder(self, language: Language) -> Builder:
        with self._lock:
            if language.name not in self._builders:
                self._builders[language.name] = Builder(language, self.cache_dir)
            return self._builders[language.name]

    def check(self, problem: Problem, completion: str) -> Outcome:
        return self.check_many([problem], [completion])[0]

    def check_many(self, problems: list[Problem], completions: list[str]) -> list[Outcome]:
        """Judge many samples at once: compiles are cached, parallel, and batched where that pays."""
        self._build_stubs_once({p.data["language"] for p in problems})
        by_language: dict[str, list[int]] = {}
        for i, p in enumerate(problems):
            by_language.setdefault(p.data["language"], []).append(i)
        results: list[Outcome | None] = [None] * len(problems)
        for name, idx in by_language.items():
            lang = LANGUAGES[name]
            programs = [lang.program(problems[i].data["question"], completions[i]) for i in idx]
            n_tests = [len(problems[i].data["question"].tests) for i in idx]
            verdicts = evaluate_programs(self.builder(lang), programs, n_tests, self.timeout)
            for i, verdict in zip(idx, verdicts):
                results[i] = outcome(verdict)
        return results  # type: ignore[return-value]

    def scores_by_language(self, records: list[dict]) -> dict[str, dict]:
        """Table 4 rows (pass@1 in percent per language) from the runner's sample records."""
        return scores_from_records(records)

    def _build_stubs_once(self, names: set[str]) -> None:
        # Self-validation checks every problem's wrong stub one by one; for compilers that pay
        # seconds per start, compiling all of a language's stubs in one batch up front saves minutes.
        for name in sorted(names - self._stubs_built):
            lang = LANGUAGES[name]
            with self._lock:
                if name in self._stubs_built:
                    continue
                self._stubs_built.add(name)
            if lang.batch_compile:
                kept = self.translations()[name].kept
                self.builder(lang).build_many([lang.program(q, lang.stub(q)) for q in kept])

    def canonical(self, problem: Problem) -> str | None:
        """Only Python has a canonical solution; the others are proven by `wrong` and by validate.py."""
        lang, q = self._parts(problem)
        if lang.name != "python":
            return None
        return reference_completion(q)

    def wrong(self, problem: Problem) -> str:
        lang, q = self._parts(problem)
        return lang.stub(q)


def _factory(dataset: str, languages: str | None = None):
    def make(**options: Any) -> BabelCodeTask:
        if languages is not None:
            options.setdefault("languages", languages)
        return BabelCodeTask(dataset, **options)

    return make


for _dataset in DATASETS:
    register_task(f"babelcode-{_dataset}", _factory(_dataset))
    for _name in LANGUAGES:
        register_task(f"babelcode-{_dataset}-{_name}", _factory(_dataset, _name))
