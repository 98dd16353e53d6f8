"""MBPP (Austin et al. 2021): 500 test problems (task ids 11-510), prompted 3-shot with tasks 2, 3, 4.

Each shot states the task and its three asserts and gives the solution between [BEGIN] and [DONE]
(the format used for CodeGemma-era MBPP numbers); the model writes the code for the fourth task
and stops at [DONE]. A completion passes when the code, the task's setup code and its asserts run
to their end in the sandbox (codegemma.eval.pyexec).

Data: a local mbpp.jsonl, a URL, or (default) the pinned google-research copy, falling back to the
Hugging Face hub. Tasks 341, 596 and 642 of that copy have asserts that their own reference
solution does not pass (the data README); they are evaluated but not used to validate the harness.
"""

from __future__ import annotations

from typing import Any

from codegemma.errors import CodegemmaError
from codegemma.eval.datafiles import local_or_download, read_jsonl
from codegemma.eval.pyexec import run_python
from codegemma.eval.task import Outcome, Problem, Task, register_task

MBPP_URL = ("https://raw.githubusercontent.com/google-research/google-research/"
            "2251e8c67a7fe7d6348714967ee101080b28e956/mbpp/mbpp.jsonl")
MBPP_SHA256 = "0b7004a79cd62d9ec7ecdd5a6e5f0ef1210ff00b286df3c5d5b57bf38c58e19a"
TEST_IDS = range(11, 511)
FEW_SHOT_IDS = (2, 3, 4)
REFERENCE_FAILS = frozenset({341, 596, 642})
STOPS = ("[DONE]", "\nYou are an expert Python programmer")


def _from_hub() -> list[dict]:
    try:
        import datasets

        parts = datasets.load_dataset("google-research-datasets/mbpp", "full")
    except Exception as exc:  # noqa: BLE001 - any failure here means "not available offline"
        raise CodegemmaError(f"MBPP is neither at {MBPP_URL} nor on the Hugging Face hub ({exc}); "
                             "pass --data PATH to a local mbpp.jsonl") from exc
    return [dict(row) for split in parts.values() for row in split]


def load_mbpp(source: str | None = None) -> dict[int, dict]:
    """All MBPP records by task id, from a path, a URL, or the default pinned copy / the hub."""
    if source is not None:
        records = read_jsonl(local_or_download(source))
    else:
        try:
            records = read_jsonl(local_or_download(MBPP_URL, MBPP_SHA256))
        except CodegemmaError:
            records = _from_hub()
    where = source or "MBPP data"
    by_id = {_task_number(r, f"{where}: record {n}"): r for n, r in enumerate(records, 1)}
    missing = [i for i in (*FEW_SHOT_IDS, *TEST_IDS) if i not in by_id]
    if missing:
        raise CodegemmaError(f"MBPP data lacks task ids {missing[:5]}{'...' if len(missing) > 5 else ''}")
    for i in (*FEW_SHOT_IDS, *TEST_IDS):  # checked now, not when a prompt or check needs them mid-run
        absent = [k for k in ("text", "code", "test_list") if k not in by_id[i]]
        if absent:
            raise CodegemmaError(f"{where}: task {i} has no {', '.join(absent)}")
    return by_id


def _task_number(record: dict, where: str) -> int:
    task_id = record.get("task_id")
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        return task_id
    if isinstance(task_id, str) and task_id.strip().isdigit():
        return int(task_id)
    raise CodegemmaError(f"{where}: task_id must be a number, got {task_id!r}")


def _code(record: dict) -> str:
    return record["code"].replace("\r\n", "\n").strip("\n")


def _shot(record: dict) -> str:
    tests = "\n".join(record["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {record['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


class MBPP(Task):
    name = "mbpp"
    # bigcode-evaluation-harness gives each program 3 s, but the reference solution to MBPP/123
    # (amicable numbers up to 9,999, a quadratic loop) takes 6.6 CPU seconds on a 2-core AMD EPYC:
    # at 3 s the harness's self-check fails on it, and a correct program that slow would fail here
    timeout = 10.0

    def __init__(self, data_path: str | None = None):
        self.data_path = data_path
        self._records: dict[int, dict] | None = None

    def _all(self) -> dict[int, dict]:
        if self._records is None:
            self._records = load_mbpp(self.data_path)
        return self._records

    def problems(self, limit: int | None = None) -> list[Problem]:
        records = self._all()
        return [Problem(f"MBPP/{i}", records[i]) for i in TEST_IDS][:limit]

    def few_shot_prefix(self) -> str:
        records = self._all()
        return "".join(f"{_shot(records[i])}{_code(records[i])}\n[DONE]\n\n" for i in FEW_SHOT_IDS)

    def prompt(self, problem: Problem, profile: Any) -> str:
        return self.few_shot_prefix() + _shot(problem.data)

    def stop_strings(self, problem: Problem) -> tuple[str, ...]:
        return STOPS

    def check(self, problem: Problem, completion: str) -> Outcome:
        d = problem.data
        program = "\n".join([completion, d.get("test_setup_code") or "", *d["test_list"], ""])
        return run_python(program, self.timeout)

    def canonical(self, problem: Problem) -> str | None:
        if int(problem.data["task_id"]) in REFERENCE_FAILS:
            return None
        return _code(problem.data) + "\n"

    def wrong(self, problem: Problem) -> str:
        return "raise AssertionError('deliberately wrong completion')\n"


register_task("mbpp", MBPP)
