import pytest

from codegemma.errors import CodegemmaError
from codegemma.eval.task import get_task, task_names


def test_tasks_are_registered_per_dataset_and_language():
    names = task_names()
    for name in ("babelcode-humaneval", "babelcode-mbpp", "babelcode-humaneval-cpp", "babelcode-mbpp-kotlin"):
        assert name in names
    with pytest.raises(CodegemmaError, match="unknown BabelCode language 'cobol'"):
        get_task("babelcode-humaneval", languages="cpp,cobol")


def test_python_reference_passes_and_stub_fails_through_the_task():
    task = get_task("babelcode-humaneval", languages="python,javascript")
    problems = task.problems(limit=3)
    assert [p.task_id for p in problems[:2]] == ["python/HumanEval/0", "python/HumanEval/1"]
    assert {p.data["language"] for p in problems} == {"python", "javascript"}
    js = problems[3]
    assert task.prompt(js, None).rstrip().endswith("{") and "\n}" in task.stop_strings(js)
    python = problems[:3]
    outcomes = task.check_many(python + [js], [task.canonical(p) for p in python] + [task.wrong(js)])
    assert [o.status for o in outcomes] == ["passed"] * 3 + ["failed"]
    assert task.canonical(js) is None  # no reference in other languages: the stub check proves them
    cut = task.postprocess(js, "  return 1;\n}\n\nfunction other() {}\n")
    assert cut == "  return 1;"
