"""HumanEval infilling (Bavarian et al. 2022): fill a masked part of a canonical HumanEval solution.

Four variants, from the official files: single-line (1033 tasks), multi-line (5815), random-span
(1640) and random-span-light (164). The model sees the FIM prompt of its profile (prefix = the
task's prompt, suffix = the rest of the function) and stops at its FIM sentinels / EOS by id.
A completion passes when prompt + completion + suffix, the tests and check(entry_point) run to
their end in the sandbox (codegemma.eval.pyexec); exact match and edit similarity against the masked text are reported too.
For single-line tasks the completion is one line: cut after its first newline, newline kept.

Models whose vocabulary has no FIM sentinels cannot take these tasks: the harness says so
instead of scoring a prompt the model was never trained on. Single-line tasks also take the
left-to-right order (`l2r`: the prefix alone, InCoder's "L-R single" baseline), which any model can,
and a prompt budget (`max_prompt_tokens`) trims prefix and suffix at line starts as the completion
server does, for a model with a short context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from codegemma.complete.budget import split_file_budget, trim_prefix
from codegemma.errors import CodegemmaError
from codegemma.eval.datafiles import local_or_download, read_jsonl
from codegemma.eval.pyexec import REFERENCE_TIMEOUT, run_python
from codegemma.eval.task import INFILLING, ModelCannotInfill, Outcome, Problem, Task, register_task
from codegemma.fim import CODEGEMMA_SENTINELS, ORDERS, PSM, fim_prompt

L2R = "l2r"

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
    timeout = REFERENCE_TIMEOUT

    def __init__(self, variant: str, data_path: str | None = None, fim_order: str = PSM,
                 max_prompt_tokens: int | None = None):
        if variant not in FILES:
            raise ValueError(f"unknown infilling variant {variant!r}")
        if fim_order not in (*ORDERS, L2R):
            raise CodegemmaError(f"unknown prompt order {fim_order!r}; expected one of {(*ORDERS, L2R)}")
        if fim_order == L2R and variant != "single-line":
            # a left-to-right model has no way to know where a multi-line middle ends
            raise CodegemmaError(f"the l2r order is for humaneval-infill-single-line, not {variant}")
        if max_prompt_tokens is not None and max_prompt_tokens < 8:
            raise CodegemmaError(f"max_prompt_tokens must be at least 8, not {max_prompt_tokens}")
        self.variant = variant
        self.name = f"humaneval-infill-{variant}"
        self.data_path = data_path
        self.fim_order = fim_order
        self.max_prompt_tokens = max_prompt_tokens
        # tokens of a text without <bos>: set from the model's tokenizer before prompts are made
        # when max_prompt_tokens is given (the CLI does)
        self.count_tokens: Callable[[str], int] | None = None
        self._problems: list[Problem] | None = None

    def problems(self, limit: int | None = None) -> list[Problem]:
        if self._problems is None:
            self._problems = load_infilling(self.variant, self.data_path)
        return self._problems[:limit]

    def prompt(self, problem: Problem, profile: Any) -> str | list[str]:
        prefix, suffix = problem.data["prompt"], problem.data["suffix"]
        if self.fim_order == L2R:
            budget = self._budget(profile, sentinels=0)
            return prefix if budget is None else trim_prefix(prefix, budget, self.count_tokens)
        if not getattr(profile, "fim_supported", False):
            raise ModelCannotInfill(f"task {self.name} needs a FIM-capable model, but model profile "
                                    f"{getattr(profile, 'name', profile)!r} has no <|fim_prefix|> token")
        sentinels = getattr(profile, "sentinels", None) or CODEGEMMA_SENTINELS
        budget = self._budget(profile, sentinels=3)
        if budget is not None:
            stops = tuple(getattr(profile, "stop_texts", ()) or ())
            prefix, suffix = split_file_budget(prefix, suffix, budget, self.count_tokens, protected=stops)
        return fim_prompt(prefix, suffix, order=self.fim_order, sentinels=sentinels)

    def _budget(self, profile: Any, sentinels: int) -> int | None:
        """Tokens left for prefix and suffix under max_prompt_tokens (None: no budget), after <bos>
        and the sentinels."""
        if self.max_prompt_tokens is None:
            return None
        if self.count_tokens is None:
            raise CodegemmaError(f"{self.name}: a prompt budget needs the model's tokenizer (count_tokens)")
        return self.max_prompt_tokens - sentinels - (1 if getattr(profile, "add_bos", True) else 0)

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
                  lambda data_path=None, fim_order=PSM, max_prompt_tokens=None, _v=_variant:
                  HumanEvalInfilling(_v, data_path, fim_order, max_prompt_tokens))
