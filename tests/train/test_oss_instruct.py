"""OSS-Instruct against a stand-in OpenAI-compatible server started on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from codegemma.train import oss_instruct

GOOD = """[Problem Description]
Write a function `double(x)` that returns twice its argument.
[Solution]
```python
def double(x):
    return 2 * x
```
[Tests]
```python
assert double(2) == 4
assert double(-1) == -2
```"""
WRONG = GOOD.replace("2 * x", "x + 2")  # passes double(2) but fails double(-1)
BROKEN = "Here is a problem without sections."


def by_seed(body: dict) -> str:
    """The stand-in model's answer, chosen by the request's seed so it does not depend on arrival order."""
    return [GOOD, WRONG, BROKEN][body["seed"] % 3]


@pytest.fixture
def serve():
    """Start a stand-in OpenAI-compatible server whose answer to a request is `reply(body)`
    (a number: that HTTP status)."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    servers = []

    def start(reply):
        app = FastAPI()
        seen = []

        @app.post("/v1/chat/completions")
        def complete(body: dict):
            seen.append(body)
            content = reply(body)
            if isinstance(content, int):
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=content)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        while not srv.started:
            time.sleep(0.01)
        servers.append((srv, thread))
        return f"http://127.0.0.1:{port}/v1", seen

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def seeds(tmp_path):
    root = tmp_path / "seeds"
    root.mkdir()
    (root / "m.py").write_text("\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(10)) + "\n")
    return root


def test_parse_sections():
    c = oss_instruct.parse(GOOD, "a.py")
    assert c.problem.startswith("Write a function") and "return 2 * x" in c.solution and "assert" in c.tests
    assert oss_instruct.parse(BROKEN) is None
    assert oss_instruct.parse(GOOD.replace("assert", "print")) is None


def test_fences_name_the_language_in_any_case():
    answer = GOOD.replace("```python", "```Python3")
    c = oss_instruct.parse(answer)
    assert c is not None and c.solution == "def double(x):\n    return 2 * x" and c.tests.startswith("assert")


RIGHT, WRONG_SOLUTION = "def double(x):\n    return 2 * x", "def double(x):\n    return x + 2"


@pytest.mark.parametrize("tests", [
    "def test_double():\n    assert double(2) == 4\n    assert double(-1) == -2",  # pytest style
    "import unittest\n\nclass TestDouble(unittest.TestCase):\n    def test_negative(self):\n"
    "        self.assertEqual(double(-1), -2)",  # unittest without unittest.main()
    "import unittest\n\nclass TestDouble(unittest.TestCase):\n    def test_negative(self):\n"
    "        self.assertEqual(double(-1), -2)\n\nif __name__ == '__main__':\n    unittest.main()",
    "def check(f):\n    assert f(-1) == -2\n\ncheck(double)",
    "import unittest\n\ndef test_double():\n    assert double(-1) == -2\n\nunittest.main()",  # no TestCase
])
def test_tests_written_as_functions_or_classes_are_run(tests):
    """Tests the test file only defines must still run: otherwise every solution passes them."""
    assert oss_instruct.passes(oss_instruct.Candidate("s", "p", RIGHT, tests))
    assert not oss_instruct.passes(oss_instruct.Candidate("s", "p", WRONG_SOLUTION, tests))


@pytest.mark.parametrize("solution, tests", [
    (RIGHT, "def helper():\n    assert double(-1) == -2"),  # no assertion ever runs
    (RIGHT, "def test_needs_a_fixture(tmp_path):\n    assert double(-1) == -2"),
    ("import sys\nsys.exit(0)\n" + WRONG_SOLUTION, "assert double(-1) == -2"),  # exits before the tests
    ("import os\nos._exit(0)\n" + WRONG_SOLUTION, "assert double(-1) == -2"),
])
def test_tests_that_check_nothing_do_not_pass(solution, tests):
    assert not oss_instruct.passes(oss_instruct.Candidate("s", "p", solution, tests))


@pytest.mark.parametrize("workers", [1, 4])
def test_keeps_only_pairs_whose_tests_pass(tmp_path, serve, seeds, workers):
    base_url, seen = serve(by_seed)
    out = tmp_path / "sft.jsonl"
    stats = oss_instruct.generate(seeds, base_url, "codegemma", n=6, out=out, seed=1, workers=workers)
    assert stats == {"seeds": 6, "responses": 6, "parsed": 4, "passed": 2, "kept": 1}  # duplicate problem kept once
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["messages"][1]["content"].startswith("```python\ndef double")
    assert sorted(body["seed"] for body in seen) == list(range(2, 8))  # one request per seed snippet
    prompt = seen[0]["messages"][0]["content"]
    assert "Code snippet for inspiration" in prompt and "def f" in prompt


def test_nothing_kept_is_refused_and_writes_nothing(tmp_path, serve, seeds):
    from codegemma.errors import CodegemmaError

    base_url, _ = serve(lambda body: WRONG)
    out = tmp_path / "sft.jsonl"
    with pytest.raises(CodegemmaError, match="no pair passed its tests, nothing written"):
        oss_instruct.generate(seeds, base_url, "codegemma", n=3, out=out)
    assert list(tmp_path.glob("*.jsonl*")) == []


def test_a_server_failure_keeps_the_pairs_before_it(tmp_path, serve, seeds):
    from codegemma.errors import CodegemmaError

    base_url, _ = serve(lambda body: GOOD if body["seed"] == 1 else 503 if body["seed"] == 3 else WRONG)
    out = tmp_path / "sft.jsonl"
    with pytest.raises(CodegemmaError, match=r"answered 503.*after 2 of 5 seeds; the pairs kept before it \(1\)"):
        oss_instruct.generate(seeds, base_url, "codegemma", n=5, out=out, workers=2)
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()] == [
        oss_instruct.parse(GOOD).problem]


def test_an_out_that_is_a_directory_is_refused_before_any_request(tmp_path, serve, seeds):
    from codegemma.errors import CodegemmaError

    base_url, seen = serve(lambda body: GOOD)
    with pytest.raises(CodegemmaError, match="is a directory: name a .jsonl file"):
        oss_instruct.generate(seeds, base_url, "codegemma", n=3, out=tmp_path)
    assert seen == [] and not list(tmp_path.glob(".*.tmp"))


def test_unreachable_server_is_a_clear_error(tmp_path):
    from codegemma.errors import CodegemmaError

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "m.py").write_text("a = 1\nb = 2\nc = 3\nd = 4\n")
    with pytest.raises(CodegemmaError, match="cannot reach"):
        oss_instruct.generate(seeds, "http://127.0.0.1:9/v1", "m", n=1, out=tmp_path / "o.jsonl")


def test_a_server_that_does_not_answer_in_time_is_named_as_slow_not_unreachable(tmp_path, serve, seeds):
    from codegemma.errors import CodegemmaError

    def slow(body):
        time.sleep(1.0)
        return GOOD

    base_url, _ = serve(slow)
    with pytest.raises(CodegemmaError, match=r"did not answer within 0.2 s"):
        oss_instruct.generate(seeds, base_url, "codegemma", n=1, out=tmp_path / "o.jsonl", request_timeout=0.2)


def test_ctrl_c_keeps_the_pairs_before_it(tmp_path, serve, seeds, monkeypatch):
    base_url, _ = serve(lambda body: GOOD if body["seed"] == 1 else WRONG)
    tested = []

    def passes_then_ctrl_c(candidate, timeout):
        tested.append(candidate)
        if len(tested) == 2:
            raise KeyboardInterrupt
        return candidate.solution == oss_instruct.parse(GOOD).solution

    monkeypatch.setattr(oss_instruct, "passes", passes_then_ctrl_c)
    out = tmp_path / "sft.jsonl"
    with pytest.raises(KeyboardInterrupt, match=r"after 2 of 5 seeds; the pairs kept before it \(1\) are in"):
        oss_instruct.generate(seeds, base_url, "codegemma", n=5, out=out, workers=2)
    assert len(out.read_text().splitlines()) == 1
