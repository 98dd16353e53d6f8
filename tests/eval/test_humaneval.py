import pytest

from codegemma.errors import CodegemmaError
from codegemma.eval.humaneval import check_program
from codegemma.eval.runner import validate
from codegemma.eval.task import get_task


def test_prompt_is_used_unstripped_and_stops_cut_the_next_definition():
    task = get_task("humaneval")
    problems = task.problems()
    assert len(problems) == 164
    p = problems[0]
    assert task.prompt(p, None) == p.data["prompt"] and task.prompt(p, None).endswith("\n")
    completion = "    return True\n\n\ndef helper():\n    pass\n"
    assert task.postprocess(p, completion) == "    return True\n\n"
    assert task.postprocess(p, "    x = 1\n# trailing comment\nprint(x)") == "    x = 1"


def test_check_program_runs_prompt_completion_tests_and_check():
    p = get_task("humaneval").problems(1)[0]
    program = check_program(p, "    return False\n")
    assert program.startswith(p.data["prompt"] + "    return False\n")
    assert program.rstrip().endswith(f"check({p.data['entry_point']})")


def test_first_problems_canonical_pass_and_wrong_fail():
    task = get_task("humaneval")
    report = validate(task, task.problems(8), workers=2)
    assert report["canonical_passed"] == 8 and report["wrong_passed"] == []


def test_a_subtly_wrong_solution_fails():
    task = get_task("humaneval")
    p = task.problems(1)[0]  # has_close_elements: "<" instead of the canonical strict comparison flips cases
    outcome = task.check(p, "    return True\n")
    assert not outcome.passed and outcome.status == "failed" and "AssertionError" in outcome.error


def test_syntax_error_is_reported_as_error():
    task = get_task("humaneval")
    outcome = task.check(task.problems(1)[0], "    return (\n")
    assert outcome.status == "error" and "SyntaxError" in outcome.error


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_wrong_ones_fail():
    task = get_task("humaneval")
    report = validate(task, task.problems(), workers=4)
    assert report["canonical_passed"] == 164, report["canonical_failed"]
    assert report["wrong_passed"] == []


def test_infinite_loop_is_a_timeout():
    task = get_task("humaneval")
    task.timeout = 1
    outcome = task.check(task.problems(1)[0], "    while True:\n        pass\n")
    assert outcome.status == "timeout" and not outcome.passed


@pytest.mark.parametrize("content, message", [
    ('{"task_id": "HumanEval/0", "prompt": "def f():\\n"}\n',
     "he.jsonl:1: a HumanEval record needs string fields canonical_solution, test, entry_point"),
    ('{"task_id": "HumanEval/0"\n', r"he.jsonl:1: not valid JSON"),
    ('\xff\n', r"he.jsonl:1: not UTF-8 text \(byte 0\)"),
])
def test_a_bad_data_file_is_refused_when_loaded_not_mid_run(tmp_path, content, message):
    """A missing field was a KeyError once the model had loaded and run.json was written."""
    path = tmp_path / "he.jsonl"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CodegemmaError, match=message):
        get_task("humaneval", data_path=str(path)).problems()
