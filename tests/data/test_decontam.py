import json
from pathlib import Path

import pytest

from codegemma.data.decontam import Decontaminator, humaneval_texts, load_decontaminator, mbpp_texts
from codegemma.errors import CodegemmaError

MBPP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def test_humaneval_docstring_and_solution_match_whitespace_insensitively():
    texts = humaneval_texts()
    assert len({t.task_id for t in texts}) == 164
    d = Decontaminator(texts)
    item = next(t for t in texts if t.task_id == "HumanEval/12" and t.field == "docstring")
    reformatted = "def f():\n    '''" + "\n      ".join(item.text.split("\n")) + "'''\n"
    hit = d.check(reformatted)
    assert hit is not None and hit.task_id == "HumanEval/12" and hit.how == "substring"
    assert d.check("def add(a, b):\n    return a + b\n") is None


def test_ten_gram_overlap_and_uninformative_grams():
    d = Decontaminator(humaneval_texts())
    solution = next(t for t in humaneval_texts() if t.task_id == "HumanEval/0" and t.field == "solution").text
    words = " ".join(solution.split()[:14])
    hit = d.check("# " + words.replace("(", " ").replace(")", " "))
    assert hit is not None and hit.how == "10-gram"
    assert d.check("digits = '0 1 2 3 4 5 6 7 8 9 a b c d e f'\n") is None


def test_mbpp(tmp_path):
    if not MBPP.is_file():
        rows = [{"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character from the string.",
                 "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s "}]
        path = tmp_path / "mbpp.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = MBPP
    texts = mbpp_texts(path)
    task = next(t for t in texts if t.task_id == "11" and t.field == "text")
    d = load_decontaminator(None, str(path), use_humaneval=False)
    assert d.check(f'"""{task.text.upper()}"""') is not None


def test_missing_file():
    with pytest.raises(CodegemmaError, match="does not exist"):
        mbpp_texts("/nonexistent/mbpp.jsonl")


@pytest.mark.parametrize("content, message", [
    ('{"task_id": 11, "text": "t"\n', r"mbpp.jsonl:1: not valid JSON"),
    ('{"task_id": 11, "text": "t"}\n', r"mbpp.jsonl:1: a benchmark record needs code"),
])
def test_a_malformed_benchmark_file_is_named_with_its_line(tmp_path, content, message):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(content)
    with pytest.raises(CodegemmaError, match=message):
        mbpp_texts(path)
