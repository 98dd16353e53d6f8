import pytest

from codegemma.errors import CodegemmaError
from codegemma.eval.mbpp import REFERENCE_FAILS, load_mbpp
from codegemma.eval.runner import validate
from codegemma.eval.task import get_task


@pytest.fixture(scope="module")
def task(mbpp_path):
    return get_task("mbpp", data_path=mbpp_path)


def test_test_split_is_tasks_11_to_510(task):
    problems = task.problems()
    assert len(problems) == 500
    assert problems[0].task_id == "MBPP/11" and problems[-1].task_id == "MBPP/510"


def test_prompt_is_three_shot_with_tasks_2_3_4_then_the_question(task, mbpp_path):
    records = load_mbpp(mbpp_path)
    p = task.problems(1)[0]
    prompt = task.prompt(p, None)
    assert prompt.count("You are an expert Python programmer") == 4
    assert prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]\n")
    for shot in (2, 3, 4):
        assert records[shot]["text"] in prompt and records[shot]["test_list"][0] in prompt
    assert prompt.index(records[2]["text"]) < prompt.index(records[3]["text"]) < prompt.index(records[4]["text"])
    assert p.data["text"] in prompt.rsplit("[DONE]", 1)[1] and "\r" not in prompt
    assert task.postprocess(p, "def f():\n    return 1\n[DONE]\n\nYou are") == "def f():\n    return 1\n"


def test_canonical_passes_and_wrong_fails_on_the_first_tasks(task):
    report = validate(task, task.problems(10), workers=2)
    assert report["canonical_passed"] == 10 and report["wrong_passed"] == []


def test_documented_broken_reference_fails_its_own_asserts(task):
    problem = next(p for p in task.problems() if int(p.data["task_id"]) == 341)
    assert task.canonical(problem) is None
    outcome = task.check(problem, problem.data["code"])
    assert not outcome.passed


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CodegemmaError, match="not found"):
        load_mbpp(str(tmp_path / "nope.jsonl"))


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text('{"task_id": 1}\n{oops\n')
    with pytest.raises(CodegemmaError, match=r"mbpp.jsonl:2"):
        load_mbpp(str(bad))


@pytest.mark.slow
def test_every_reference_that_is_not_documented_broken_passes(task):
    report = validate(task, task.problems(), workers=4)
    assert report["canonical_failed"] == []
    assert report["canonical_checked"] == 500 - len(REFERENCE_FAILS & set(range(11, 511)))
    assert report["wrong_passed"] == []


def test_a_task_id_that_is_not_a_number_is_named(tmp_path):
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text('{"task_id": 2}\n{"task_id": "two"}\n')
    with pytest.raises(CodegemmaError, match=r"mbpp.jsonl: record 2: task_id must be a number, got 'two'"):
        load_mbpp(str(bad))
