"""The task interface of the evaluation harness, and the registry that finds tasks by name.

A task is a benchmark: a list of problems, how to prompt a model for each, where to cut its
output, and how to judge a completion by running it in the sandbox. Adding a benchmark or a
language means adding one module that subclasses `Task` and calls `register_task` at import;
`TASK_MODULES` lists the modules imported on first lookup.

    task = get_task("humaneval")
    for problem in task.problems(limit=5):
        prompt = task.prompt(problem, profile)          # text, or FIM pieces (list[str]) for infilling
        completion = task.postprocess(problem, raw)      # cut at the first stop string
        outcome = task.check(problem, completion)        # Outcome(passed, status, error, seconds)

Every task also yields `canonical(problem)` (a completion that must pass, or None where the
benchmark's reference is documented as broken) and `wrong(problem)` (one that must fail); the
harness runs both before it reports anything.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from codegemma.errors import CodegemmaError

COMPLETION = "completion"
INFILLING = "infilling"

# Modules whose import registers tasks; missing ones are skipped (not part of this install).
TASK_MODULES = [
    "codegemma.eval.humaneval",
    "codegemma.eval.mbpp",
    "codegemma.eval.infilling",
    "codegemma.eval.babelcode",
]


@dataclass(frozen=True)
class Problem:
    task_id: str
    data: dict[str, Any] = field(hash=False, compare=False)


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed" | "failed" (ran, a test failed) | "error" (did not compile/import) | "timeout"
    error: str = ""  # one short line: the exception or the reason it was stopped
    seconds: float = 0.0
    isolation: list[str] = field(default_factory=list)


class ModelCannotInfill(CodegemmaError):
    """An infilling task was asked of a model whose vocabulary has no FIM sentinels."""


class Task(ABC):
    """One benchmark. Subclasses set `name`, `kind` and `language` and implement the abstract methods."""

    name: str = ""
    kind: str = COMPLETION  # or INFILLING: prompt() returns FIM pieces, metrics add exact match
    language: str = "python"
    timeout: float = 10.0  # CPU seconds for one check program (`codegemma eval --timeout`)

    @abstractmethod
    def problems(self, limit: int | None = None) -> list[Problem]:
        """The problems in benchmark order, the first `limit` of them when given."""

    @abstractmethod
    def prompt(self, problem: Problem, profile: Any) -> str | list[str]:
        """What the model sees: text for completion tasks, FIM pieces (see codegemma.fim) for infilling.

        `profile` is a codegemma.profiles.ModelProfile (sentinels, fim_supported); tasks that need
        FIM raise ModelCannotInfill when `profile.fim_supported` is false.
        """

    def stop_strings(self, problem: Problem) -> tuple[str, ...]:
        """Text that ends a completion (the model's stop token ids come from its profile)."""
        return ()

    def postprocess(self, problem: Problem, completion: str) -> str:
        """The completion cut at the earliest stop string."""
        cut = len(completion)
        for stop in self.stop_strings(problem):
            at = completion.find(stop)
            if at != -1:
                cut = min(cut, at)
        return completion[:cut]

    @abstractmethod
    def check(self, problem: Problem, completion: str) -> Outcome:
        """Run the completion against the problem's tests in the sandbox."""

    @abstractmethod
    def canonical(self, problem: Problem) -> str | None:
        """A completion that passes (the reference solution), for self-validation; None where the
        benchmark's own reference is known not to pass (documented per task)."""

    def wrong(self, problem: Problem) -> str:
        """A completion that must fail: it breaks every test (the default raises at once)."""
        return "    raise AssertionError('deliberately wrong completion')\n"

    def reference(self, problem: Problem) -> str | None:
        """The expected text for exact-match metrics (infilling tasks); None where not meaningful."""
        return None


_REGISTRY: dict[str, Callable[..., Task]] = {}
_loaded = False


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Make `get_task(name)` build a task with `factory(**options)`; a name may be registered once."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue
            raise


def task_names() -> list[str]:
    _load_modules()
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, built with `options` (e.g. data_path=...)."""
    _load_modules()
    if name not in _REGISTRY:
        raise CodegemmaError(f"unknown eval task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)
