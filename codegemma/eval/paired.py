"""Two models on the same problems: which ones each solves that the other does not, and whether the
difference is more than chance.

A benchmark score alone cannot say whether 71 problems against 70 is a lead. Scored on the same
problems, the two models agree on most of them; only the problems exactly one of them solves carry
information, and under "no difference" each of those is a fair coin. McNemar's exact test (McNemar
1947; the exact form is the two-sided binomial test on those discordant problems) gives the chance of a
split at least as uneven as the one seen.

Outcome files this project writes:

- an eval run directory (`codegemma eval TASK --out DIR`): `samples.jsonl`, one group named after the
  task, one outcome per problem (`passed`, or `exact_match` with `--metric exact`);
- an infilling answers file (`codegemma train infill-eval --answers`, or a training run's
  `infill-answers.jsonl`): one group per prompt order (psm, spm, l2r), one outcome (`exact`) per masked
  line, in the order the lines were drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb
from pathlib import Path

from codegemma.errors import CodegemmaError
from codegemma.eval.datafiles import read_jsonl

METRICS = ("passed", "exact")

# group -> example key -> outcome
Outcomes = dict[str, dict[str, bool]]


@dataclass(frozen=True)
class PairedResult:
    first_group: str
    second_group: str
    examples: int
    first: int  # examples the first model solves
    second: int
    both: int
    only_first: int
    only_second: int
    p_value: float  # McNemar's exact test, two-sided


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value: the chance, if each discordant example were a fair coin, of a split at least
    this uneven."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def compare(first: dict[str, bool], second: dict[str, bool], first_group: str = "",
            second_group: str = "") -> PairedResult:
    """Counts and p-value over the examples both scored; they must have scored the same ones."""
    if first.keys() != second.keys():
        missing = sorted(first.keys() ^ second.keys())
        raise CodegemmaError(f"the two outcome sets do not score the same examples ({first_group} against "
                             f"{second_group}): {len(missing)} differ, e.g. {missing[0]}")
    both = sum(first[k] and second[k] for k in first)
    only_first = sum(first[k] and not second[k] for k in first)
    only_second = sum(second[k] and not first[k] for k in first)
    return PairedResult(first_group, second_group, len(first), both + only_first, both + only_second, both,
                        only_first, only_second, mcnemar_exact(only_first, only_second))


def load(path: str | Path, metric: str = "passed") -> Outcomes:
    """The outcomes of an eval run directory (or its samples.jsonl) or of an infilling answers file."""
    if metric not in METRICS:
        raise CodegemmaError(f"unknown metric {metric!r}; expected one of {METRICS}")
    path = Path(path)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise CodegemmaError(f"no outcomes at {path} (expected an eval run directory holding samples.jsonl, or "
                             f"an infilling answers file)")
    records = read_jsonl(path)
    if not records:
        raise CodegemmaError(f"{path}: no records")
    if "task_id" in records[0]:
        return _eval_outcomes(path, records, metric)
    if "order" in records[0] and "exact" in records[0]:
        return _answer_outcomes(path, records)
    raise CodegemmaError(f"{path}: record 1: neither an eval sample (task_id, passed) nor an infilling answer "
                         f"(order, exact)")


def _field(path: Path, number: int, record: dict, name: str):
    if name not in record:
        raise CodegemmaError(f"{path}: record {number}: no {name!r} field")
    return record[name]


def _eval_outcomes(path: Path, records: list[dict], metric: str) -> Outcomes:
    field = "passed" if metric == "passed" else "exact_match"
    outcomes: Outcomes = {}
    for number, record in enumerate(records, 1):
        if _field(path, number, record, "sample") != 0:
            raise CodegemmaError(f"{path}: record {number}: more than one sample per problem; a paired test "
                                 f"compares one outcome per problem (run the eval with --n 1)")
        group = outcomes.setdefault(str(record.get("task", "task")), {})
        group[str(_field(path, number, record, "task_id"))] = bool(_field(path, number, record, field))
    return outcomes


def _answer_outcomes(path: Path, records: list[dict]) -> Outcomes:
    # the same line can be drawn twice: the key is the draw's place in its order, checked by file and line
    outcomes: Outcomes = {}
    for number, record in enumerate(records, 1):
        group = outcomes.setdefault(str(_field(path, number, record, "order")), {})
        key = f"{len(group)}:{record.get('path', '')}:{record.get('line', '')}"
        group[key] = bool(_field(path, number, record, "exact"))
    return outcomes


def compare_files(first: Outcomes, second: Outcomes,
                  pairs: list[tuple[str, str]] | None = None) -> list[PairedResult]:
    """One result per pair of groups (default: every group the two share, each with itself)."""
    if not pairs:
        pairs = [(g, g) for g in first if g in second]
        if not pairs:
            raise CodegemmaError(f"the two share no group to compare ({sorted(first)} against {sorted(second)}); "
                                 f"name the pairs with --pair FIRST:SECOND")
    results = []
    for a, b in pairs:
        for name, outcomes, which in ((a, first, "first"), (b, second, "second")):
            if name not in outcomes:
                raise CodegemmaError(f"the {which} outcomes have no group {name!r}; they have {sorted(outcomes)}")
        results.append(compare(first[a], second[b], a, b))
    return results


def table(results: list[PairedResult], first_name: str, second_name: str) -> str:
    """A Markdown table of the results."""
    lines = [f"| {first_name} | {second_name} | examples | solved, first / second | both | only first | "
             f"only second | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.first_group} | {r.second_group} | {r.examples} | {r.first} / {r.second} | {r.both} | "
                     f"{r.only_first} | {r.only_second} | {r.p_value:.3g} |")
    return "\n".join(lines)


def as_json(results: list[PairedResult], first: str, second: str) -> dict:
    return {"first": first, "second": second, "test": "McNemar exact, two-sided",
            "pairs": [asdict(r) for r in results]}
