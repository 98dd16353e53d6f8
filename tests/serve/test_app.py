"""The HTTP server end to end on 127.0.0.1: the official openai client, raw HTTP for /infill, SSE and errors."""

from __future__ import annotations

import http.client
import json
import threading
import time

import httpx
import openai
import pytest

from codegemma.errors import CodegemmaError


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
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, 400, "n"),
    # seeds the sampler cannot take, numbers Python will not read, structures too deep to parse
    ("/v1/completions", {"prompt": "x", "temperature": 1, "seed": 2 ** 70, "max_tokens": 1}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "temperature": 1, "seed": -1, "max_tokens": 1}, 400, "seed"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "seed": 2 ** 64,
                              "max_tokens": 1}, 400, "seed"),
    ("/infill", {"input_prefix": "a", "temperature": 1, "seed": 2 ** 64, "n_predict": 1}, 400, "seed"),
    pytest.param("/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400, "body",
                 id="5000-digit-number"),
    pytest.param("/v1/completions", b"[" * 100_000, 400, "body", id="100000-nested-lists"),
    ("/infill", {"input_prefix": "a", "t_max_predict_ms": 10 ** 400}, 400, "t_max_predict_ms"),
    # numbers and booleans are strict, as in OpenAI's API
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1, "stream": "true"}, 400, "stream"),
    ("/infill", {"input_prefix": "a", "n_predict": "5"}, 400, "n_predict"),
    # OpenAI fields the server does not implement are refused by name, not ignored
    ("/v1/completions", {"prompt": "x", "max_tokens": 1, "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1, "logprobs": 0}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "logprobs": True},
     400, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": True}, 400, "n"),
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


def test_non_streaming_disconnect_cancels_generation(slow_server_factory):
    server = slow_server_factory(text="word " * 300, pace=0.02)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(server.url + "/v1/completions", json={"prompt": "def f():\n    ", "max_tokens": 500},
                   timeout=httpx.Timeout(30, read=0.5))
    time.sleep(0.6)  # the server looks at the connection every 0.25 s while it waits
    yielded = server.engine.yielded
    time.sleep(0.5)
    assert server.engine.yielded == yielded < 200
    assert "codegemma_cancelled_total 1.0" in httpx.get(server.url + "/metrics").text


def test_unexpected_error_is_a_json_500_on_a_kept_connection_and_counted(slow_server_factory, caplog):
    server = slow_server_factory()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    server.engine.stream = broken
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/infill", body=json.dumps({"input_prefix": "a = "}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 500 and body["error"]["type"] == "server_error" and "RuntimeError" in body["error"]["message"]
    conn.request("GET", "/health")  # the same connection, still open
    assert conn.getresponse().status == 200
    conn.close()
    assert 'codegemma_requests_total{endpoint="/infill",status="500"} 1.0' in httpx.get(server.url + "/metrics").text
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1  # the traceback, once


def test_streamed_client_errors_get_the_same_400_as_unstreamed(tiny_server):
    too_long = {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 1}
    with httpx.Client(base_url=tiny_server.url, timeout=30) as http_client:
        plain = http_client.post("/v1/chat/completions", json=too_long)
        streamed = http_client.post("/v1/chat/completions", json={**too_long, "stream": True})
    assert plain.status_code == streamed.status_code == 400
    assert streamed.json() == plain.json() and streamed.json()["error"]["type"] == "invalid_request_error"


def test_a_client_error_found_mid_stream_is_labelled_as_one(slow_server_factory):
    server = slow_server_factory()

    def refuses(*args, **kwargs):
        raise CodegemmaError("that request cannot be served")

    server.engine.stream = refuses
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x = ", "stream": True}, timeout=30)
    assert sse_payloads(r.text) == [{"error": {"message": "that request cannot be served",
                                               "type": "invalid_request_error", "param": None, "code": None}}]


def test_infill_time_limit_holds_for_requests_that_would_be_batched(slow_server_factory):
    server = slow_server_factory(pace=0.05, max_batch=8)
    results = []

    def call():
        r = httpx.post(server.url + "/infill", json={"input_prefix": "def f():\n    ", "n_predict": 40,
                                                      "t_max_predict_ms": 100}, timeout=30)
        results.append(r.json())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:  # the first one runs while the others queue up behind it
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert [r["stop_type"] for r in results] == ["none"] * 4
    assert all(r["tokens_predicted"] < 40 for r in results)


def test_chat_max_tokens_zero_is_an_empty_reply(tiny_server):
    for field in ("max_tokens", "max_completion_tokens"):
        r = httpx.post(tiny_server.url + "/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": "Say hi"}], field: 0}, timeout=60)
        assert r.status_code == 200
        data = r.json()
        assert data["choices"][0]["message"]["content"] == "" and data["usage"]["completion_tokens"] == 0


def test_chat_n_gives_n_choices_each_reproducible_by_seed(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say hi"}]
    both = client.chat.completions.create(model="tiny-fim", messages=messages, max_tokens=4, temperature=1.0, seed=3,
                                          n=2)
    assert [c.index for c in both.choices] == [0, 1]
    second = client.chat.completions.create(model="tiny-fim", messages=messages, max_tokens=4, temperature=1.0, seed=4)
    assert both.choices[1].message.content == second.choices[0].message.content  # choice i samples with seed + i


def test_a_list_of_prompts_gives_choices_prompt_by_prompt(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)
    prompts = ["def add(a, b):\n    return ", "import os\n"]
    out = client.completions.create(model="tiny-fim", prompt=prompts, max_tokens=3, temperature=0, n=2)
    singles = [client.completions.create(model="tiny-fim", prompt=p, max_tokens=3, temperature=0) for p in prompts]
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert out.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    for body, message in [({"prompt": [1, 2]}, "token ids are not supported"), ({"prompt": []}, "empty"),
                          ({"prompt": ["a", "b"], "stream": True}, "one prompt only")]:
        r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and message in r.text


def test_chat_stream_sends_usage_when_asked(tiny_server):
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tiny-fim", messages=[{"role": "user", "content": "Say hi"}], max_tokens=3, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_deadline_passing_before_the_first_token_is_a_503(slow_server_factory):
    server = slow_server_factory(prefill_s=0.8, request_timeout_s=0.4)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x = ", "max_tokens": 5}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "timeout"
    streamed = httpx.post(server.url + "/infill", json={"input_prefix": "x = ", "stream": True}, timeout=30)
    assert [e["error"]["type"] for e in sse_payloads(streamed.text)] == ["timeout"]
