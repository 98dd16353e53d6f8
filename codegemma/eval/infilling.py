"""HumanEval infilling (Bavarian et al. 2022): fill a masked part of a canonical HumanEval solution.

Four variants, from the official files: single-line (1033 tasks), multi-line (5815), random-span
(1640) and random-span-light (164). The model sees the FIM prompt of its profile (prefix = the
task's prompt, suffix = the rest of the function) and stops at its FIM sentinels / EOS by id.
A completion passes when prompt + completion + suffix, the tests and check(entry_point) run to
exit 0 in the sandbox; exact match and edit similarity against the masked text are reported too.
For single-line tasks the completion is one line: cut after its first newline, newline kept.

Models whose vocabulary has no FIM sentinels cannot take these tasks: the harness says so
instead of scoring a prompt the model was never trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codegemma.eval.datafiles import local_or_download, read_jsonl
from codegemma.eval.pyexec import run_python
from codegemma.eval.task import INFILLING, ModelCannotInfill, Outcome, Problem, Task, register_task
from codegemma.fim import CODEGEMMA_SENTINELS, PSM, fim_prompt

BASE_URL = "https://raw.githubusercontent.com/openai/human-eval-infilling/master/data/"
# The shipped file names; upstream's data.py asks for "RandomSpan*.jsonl.gz", which do not exist.
FILES = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


def load_infilling(variant: str, source: str | None = None) -> list[Problem]:
    """Problems of one variant from a directory holding the official files, a file, or a URL."""
    name = FILES[variant]
    if source is None:
        source = BASE_URL + name
    elif Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser() / name)
    return [Problem(r["task_id"], r) for r in read_jsonl(local_or_download(source))]


class HumanEvalInfilling(Task):
    kind = INFILLING
    timeout = 10.0

    def __init__(self, variant: str, data_path: str | None = None, fim_order: str = PSM):
        if variant not in FILES:
            raise ValueError(f"unknown infilling variant {variant!r}")
        self.variant = variant
        self.name = f"humaneval-infill-{variant}"
        self.data_path = data_path
        self.fim_order = fim_order
        self._problems: list[Problem] | None = None

    def problems(self, limit: int | None = None) -> list[Problem]:
        if self._problems is None:
            self._problems = load_infilling(self.variant, self.data_path)
        return self._problems[:limit]

    def prompt(self, problem: Problem, profile: Any) -> list[str]:
        if not getattr(profile, "fim_supported", False):
            raise ModelCannotInfill(f"task {self.name} needs a FIM-capable model, but model profile "
                                    f"{getattr(profile, 'name', profile)!r} has no <|fim_prefix|> token")
        sentinels = getattr(profile, "sentinels", None) or CODEGEMMA_SENTINELS
        return fim_prompt(problem.data["prompt"], problem.data["suffix"], order=self.fim_order, sentinels=sentinels)

    def postprocess(self, problem: Problem, completion: str) -> str:
        completion = super().postprocess(problem, completion)
        if self.variant == "single-line":
            completion = completion.split("\n", 1)[0] + "\n"
        return completion

    def check(self, problem: Problem, completion: str) -> Outcome:
        d = problem.data
        program = f"{d['prompt']}{completion}{d['suffix']}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"
        return run_python(program, self.timeout)

    def canonical(self, problem: Problem) -> str:
        return problem.data["canonical_solution"]

    def reference(self, problem: Problem) -> str:
        return problem.data["canonical_solution"]


for _variant in FILES:
    register_task(f"humaneval-infill-{_variant}",
                  lambda data_path=None, fim_order=PSM, _v=_variant: HumanEvalInfilling(_v, data_path, fim_order))
