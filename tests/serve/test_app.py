"""The HTTP server end to end on 127.0.0.1: the official openai client, raw HTTP for /infill, SSE and errors."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest


def sse_payloads(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]


def test_openai_client_completions_models_and_chat(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-fim"]

    out = client.completions.create(model="tiny-fim", prompt="def add(a, b):\n    return ", suffix="\n",
                                    max_tokens=6, temperature=0)
    assert isinstance(out.choices[0].text, str) and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 5 and out.usage.completion_tokens <= 6

    streamed = client.completions.create(model="tiny-fim", prompt="def add(a, b):\n    return ", suffix="\n",
                                         max_tokens=6, temperature=0, stream=True)
    chunks = list(streamed)
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text  # greedy: same text either way

    several = client.completions.create(model="tiny-fim", prompt="x = ", max_tokens=3, n=2, temperature=0.8, seed=1)
    assert len(several.choices) == 2

    chat = client.chat.completions.create(model="tiny-fim", messages=[{"role": "user", "content": "Say hi"}],
                                          max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    stream = client.chat.completions.create(model="tiny-fim", messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=5, temperature=0, stream=True)
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant" and parts[-1].choices[0].finish_reason is not None
    # content as a list of text parts, as some OpenAI clients send it: the same conversation
    in_parts = client.chat.completions.create(
        model="tiny-fim", messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
        max_tokens=5, temperature=0)
    assert in_parts.choices[0].message.content == chat.choices[0].message.content


def test_infill_and_prefix_cache(tiny_server):
    body = {"input_prefix": "import os\n\ndef list_files(path):\n    ", "input_suffix": "\n    return files\n",
            "input_extra": [{"filename": "util.py", "text": "def helper():\n    return 1\n"}],
            "n_predict": 4, "filename": "main.py"}
    with httpx.Client(base_url=tiny_server.url, timeout=30) as http:
        first = http.post("/infill", json=body).json()
        second = http.post("/infill", json=body).json()
        for key in ("content", "stop_type", "timings", "tokens_cached", "tokens_evaluated", "mode"):
            assert key in first
        assert first["mode"] == "fim" and first["stop_type"] in ("eos", "limit", "word")
        assert second["tokens_cached"] > 0 and second["tokens_evaluated"] < first["tokens_evaluated"]
        assert first["timings"]["predicted_n"] <= 4

        r = http.post("/infill", json={**body, "stream": True})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(r.text)
        assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
        assert "".join(e["content"] for e in events) == second["content"]


def test_tabby_segments(tiny_server):
    body = {"language": "python", "segments": {"prefix": "def f(x):\n    return ", "suffix": "\n",
                                               "filepath": "a.py",
                                               "declarations": [{"filepath": "b.py", "body": "def g(): pass\n"}]}}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200
    data = r.json()
    assert data["id"].startswith("cmpl-") and isinstance(data["choices"][0]["text"], str)


def test_health_and_metrics(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        http.post("/infill", json={"input_prefix": "a = ", "n_predict": 2})
        text = http.get("/metrics").text
        assert 'codegemma_requests_total{endpoint="/infill",status="200"}' in text
        assert "codegemma_generated_tokens_total" in text and "codegemma_queue_depth" in text


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b"{not json", 400, "body"),
    ("/v1/completions", b"[1, 2]", 400, "body"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 9}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "n": 2, "stream": True}, 400, "n"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"segments": {"suffix": "x"}}, 400, "segments.prefix"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages.0.content"),
    ("/infill", {"input_prefix": 3}, 400, "input_prefix"),
    ("/infill", {"input_extra": [{"filename": "a"}]}, 400, "input_extra.0.text"),
    ("/infill", b'{"input_prefix": "\\ud800"}', 400, "input_prefix"),
])
def test_invalid_requests_name_the_field(tiny_server, path, body, status, param):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(tiny_server.url + path, timeout=30, **kwargs)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and param.split(".")[0] in error["message"]


def test_other_error_paths(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=30) as http:
        assert http.post("/v1/completions", content=b"x" * 3_000_000).status_code == 413
        r = http.get("/nope")
        assert r.status_code == 404 and "error" in r.json()
        assert http.get("/infill").status_code == 405
        # a conversation too long for the model's context is the client's mistake, not a crash
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "word " * 9000}],
                                                    "max_tokens": 1})
        assert r.status_code == 400 and "context" in r.json()["error"]["message"]
        assert http.get("/health").status_code == 200  # still alive


def test_full_queue_answers_503_with_retry_after(slow_server_factory):
    server = slow_server_factory(pace=0.05, max_queue=1, max_batch=1)
    statuses = []

    def call():
        r = httpx.post(server.url + "/infill", json={"input_prefix": "a = ", "n_predict": 10}, timeout=30)
        statuses.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [s for s, _ in statuses]
    assert codes.count(200) >= 1 and 503 in codes
    assert all(retry == "2" for s, retry in statuses if s == 503)


def test_disconnect_cancels_generation(slow_server_factory):
    server = slow_server_factory(pace=0.02)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={"prompt": "def f():\n    ", "max_tokens": 500,
                                                          "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        time.sleep(0.5)
        yielded = server.engine.yielded
        time.sleep(0.5)
        assert server.engine.yielded == yielded < 200  # generation stopped soon after the client left
        assert "codegemma_cancelled_total 1.0" in http.get("/metrics").text


def test_request_time_limit(slow_server_factory):
    server = slow_server_factory(text="word " * 300, pace=0.05, request_timeout_s=0.6)
    t0 = time.monotonic()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "def f():\n    ", "max_tokens": 500}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - t0 < 3


def test_concurrent_non_streaming_requests_are_batched(slow_server_factory):
    server = slow_server_factory(text="value\n", pace=0.05, max_batch=8)
    results = []

    def call(i):
        r = httpx.post(server.url + "/infill", json={"input_prefix": f"x{i} = ", "n_predict": 4}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert server.engine.batches and max(server.engine.batches) >= 2
