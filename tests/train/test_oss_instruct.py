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


@pytest.fixture
def server():
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    replies = [GOOD, WRONG, BROKEN]
    seen = []

    @app.post("/v1/chat/completions")
    def complete(body: dict):
        seen.append(body)
        content = replies[(len(seen) - 1) % len(replies)]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1", seen
    srv.should_exit = True
    thread.join(timeout=5)


def test_parse_sections():
    c = oss_instruct.parse(GOOD, "a.py")
    assert c.problem.startswith("Write a function") and "return 2 * x" in c.solution and "assert" in c.tests
    assert oss_instruct.parse(BROKEN) is None
    assert oss_instruct.parse(GOOD.replace("assert", "print")) is None


def test_keeps_only_pairs_whose_tests_pass(tmp_path, server):
    base_url, seen = server
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "m.py").write_text("\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(10)) + "\n")
    out = tmp_path / "sft.jsonl"
    stats = oss_instruct.generate(seeds, base_url, "codegemma", n=6, out=out, seed=1)
    assert stats == {"seeds": 6, "responses": 6, "parsed": 4, "passed": 2, "kept": 1}  # duplicate problem kept once
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["messages"][1]["content"].startswith("```python\ndef double")
    prompt = seen[0]["messages"][0]["content"]
    assert "Code snippet for inspiration" in prompt and "def f" in prompt


def test_unreachable_server_is_a_clear_error(tmp_path):
    from codegemma.errors import CodegemmaError

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "m.py").write_text("a = 1\nb = 2\nc = 3\nd = 4\n")
    with pytest.raises(CodegemmaError, match="cannot reach"):
        oss_instruct.generate(seeds, "http://127.0.0.1:9/v1", "m", n=1, out=tmp_path / "o.jsonl")
