import json

import pytest

from codegemma.cli import main
from codegemma.errors import CodegemmaError
from codegemma.eval import paired
from codegemma.eval.runner import GenerationSettings, prompt_text, run_eval
from codegemma.eval.task import get_task
from codegemma.train.evaluate import InfillExample, answer_records

from .fakes import FakeProfile, fake_generator


@pytest.mark.parametrize("only_first,only_second", [(0, 0), (5, 0), (11, 9), (3, 17), (26, 21), (59, 39), (1, 1)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(only_first, only_second):
    stats = pytest.importorskip("scipy.stats")
    n = only_first + only_second
    expected = stats.binomtest(only_first, n, 0.5).pvalue if n else 1.0
    assert paired.mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_known_values():
    assert paired.mcnemar_exact(5, 0) == 2 / 2 ** 5  # five discordant lines, all one way
    assert paired.mcnemar_exact(10, 10) == 1.0
    assert paired.mcnemar_exact(0, 0) == 1.0


def _eval_run(tmp_path, name, solved: set[int], limit=6):
    """A real eval run directory in which the problems numbered in `solved` get their canonical solution."""
    task = get_task("humaneval")
    answers = {prompt_text(task.prompt(p, FakeProfile())): (task.canonical(p) if i in solved else task.wrong(p))
               for i, p in enumerate(task.problems(limit))}
    generator, _ = fake_generator(answers)
    run_eval(task, generator, GenerationSettings(), tmp_path / name, limit=limit, progress=False)
    return tmp_path / name


def test_eval_runs_compare_problem_by_problem(tmp_path):
    first = paired.load(_eval_run(tmp_path, "a", {0, 1, 2, 3}))
    second = paired.load(_eval_run(tmp_path, "b", {2, 3, 4}))
    [result] = paired.compare_files(first, second)
    assert (result.first_group, result.examples, result.first, result.second) == ("humaneval", 6, 4, 3)
    assert (result.both, result.only_first, result.only_second) == (2, 2, 1)
    assert result.p_value == 1.0


def _answers_file(path, outcomes: dict[str, list[bool]]):
    """An answers file as a training run writes it: the same drawn lines in every order, one drawn twice."""
    examples = [InfillExample("pkg/mod.py", "def f():\n", f"    return {i}\n", "") for i in range(3)]
    examples.append(examples[0])
    records = []
    for order, exact in outcomes.items():
        records += answer_records(order, examples, [ex.middle.rstrip() if hit else "pass"
                                                   for ex, hit in zip(examples, exact, strict=True)])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_answers_files_pair_by_draw_and_order(tmp_path):
    fim = _answers_file(tmp_path / "fim.jsonl", {"psm": [True, True, False, True], "spm": [True, False, True, True]})
    nofim = _answers_file(tmp_path / "nofim.jsonl",
                          {"spm": [False, False, True, False], "l2r": [True, True, True, True]})
    first, second = paired.load(fim), paired.load(nofim)
    assert sorted(first) == ["psm", "spm"] and len(first["spm"]) == 4  # the repeated line counts twice
    [same] = paired.compare_files(first, second)  # the one order both have
    assert (same.first_group, same.first, same.second, same.only_first, same.only_second) == ("spm", 3, 1, 2, 0)
    [best] = paired.compare_files(first, second, [("psm", "l2r")])
    assert (best.both, best.only_first, best.only_second) == (3, 0, 1)


def test_mismatched_examples_are_refused(tmp_path):
    a = _answers_file(tmp_path / "a.jsonl", {"spm": [True] * 4})
    b = tmp_path / "b.jsonl"
    b.write_text("".join(line for line in a.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(CodegemmaError, match="do not score the same examples"):
        paired.compare_files(paired.load(a), paired.load(b))
    with pytest.raises(CodegemmaError, match="no group 'psm'"):
        paired.compare_files(paired.load(a), paired.load(a), [("psm", "spm")])


def test_bad_outcome_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"order": "spm", "exact": true}\nnot json\n')
    with pytest.raises(CodegemmaError, match=r"bad.jsonl:2: not valid JSON"):
        paired.load(bad)
    bad.write_text('{"text": "hello"}\n')
    with pytest.raises(CodegemmaError, match=r"bad.jsonl: record 1: neither"):
        paired.load(bad)
    bad.write_text('{"task": "t", "task_id": "t/0", "sample": 0, "passed": true}\n'
                   '{"task": "t", "task_id": "t/0", "sample": 1, "passed": false}\n')
    with pytest.raises(CodegemmaError, match=r"bad.jsonl: record 2: more than one sample"):
        paired.load(bad)
    with pytest.raises(CodegemmaError, match="no outcomes at"):
        paired.load(tmp_path / "missing")


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    fim = _answers_file(tmp_path / "fim.jsonl", {"spm": [True, True, True, True]})
    nofim = _answers_file(tmp_path / "nofim.jsonl", {"l2r": [False, False, False, False]})
    out = tmp_path / "compare.json"
    assert main(["eval-compare", str(fim), str(nofim), "--pair", "spm:l2r", "--json", str(out)]) == 0
    assert "| spm | l2r | 4 | 4 / 0 | 0 | 4 | 0 | 0.125 |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["pairs"][0]["only_first"] == 4 and saved["pairs"][0]["p_value"] == 0.125


def test_cli_bad_pair_is_one_line_error(tmp_path, capsys):
    fim = _answers_file(tmp_path / "fim.jsonl", {"spm": [True] * 4})
    assert main(["eval-compare", str(fim), str(fim), "--pair", "spm"]) == 1
    err = capsys.readouterr().err
    assert "expected FIRST:SECOND" in err and "Traceback" not in err
