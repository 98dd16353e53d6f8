"""Load test: concurrent clients against `codegemma serve` on 127.0.0.1, mixed streaming and not.

Starts the server (or uses --url), then runs `--clients` clients for `--seconds`, each sending
one request after another: /infill and /v1/completions, with and without SSE streaming, and chat.
Every response is checked: status 200, well-formed JSON, every SSE event well-formed and the stream
properly terminated. Reports 5xx, lost (connection error or timeout) and garbled responses, p50 /
p99 latency and throughput.

    python bench/serve_load.py [--model M] [--clients 16] [--seconds 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

SNIPPETS = [
    ("import os\n\n\ndef list_python_files(root):\n    ", "\n\n\nif __name__ == '__main__':\n    main()\n"),
    ("def fibonacci(n):\n    if n < 2:\n        return n\n    return ", "\n"),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ", "\n"),
    ("function sum(values) {\n  let total = 0;\n  for (const v of values) {\n    ", "\n  }\n  return total;\n}\n"),
]


def percentile(values, q):
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class StreamError(Exception):
    """The server ended a stream with an error event (e.g. the request's time limit while queued)."""


def parse_sse(text: str) -> tuple[list[dict], bool]:
    events, done = [], False
    for line in text.split("\n"):
        if not line:
            continue
        if not line.startswith("data: "):
            raise ValueError(f"not an SSE data line: {line[:80]!r}")
        if line == "data: [DONE]":
            done = True
            continue
        events.append(json.loads(line[6:]))
        if "error" in events[-1]:
            raise StreamError(events[-1]["error"]["message"])
    return events, done


async def one_request(http: httpx.AsyncClient, rng: random.Random, max_tokens: int) -> tuple[str, int, bool]:
    """(kind, status, well_formed)."""
    prefix, suffix = rng.choice(SNIPPETS)
    kind = rng.choice(["infill", "infill-stream", "completions", "completions-stream", "chat-stream"])
    if kind.startswith("infill"):
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": max_tokens,
                "stream": kind.endswith("stream")}
        r = await http.post("/infill", json=body)
        if r.status_code != 200:
            return kind, r.status_code, False
        if not body["stream"]:
            data = r.json()
            return kind, 200, isinstance(data.get("content"), str) and data.get("stop") is True
        events, _ = parse_sse(r.text)
        ok = bool(events) and events[-1].get("stop") is True and all(isinstance(e.get("content"), str) for e in events)
        return kind, 200, ok and all(e["stop"] is False for e in events[:-1])
    if kind.startswith("completions"):
        body = {"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "stream": kind.endswith("stream")}
        r = await http.post("/v1/completions", json=body)
        if r.status_code != 200:
            return kind, r.status_code, False
        if not body["stream"]:
            data = r.json()
            return kind, 200, isinstance(data["choices"][0]["text"], str) and data["object"] == "text_completion"
        events, done = parse_sse(r.text)
        return kind, 200, done and bool(events) and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    body = {"messages": [{"role": "user", "content": "Write a Python function that reverses a string."}],
            "max_tokens": max_tokens, "stream": True}
    r = await http.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        return kind, r.status_code, False
    events, done = parse_sse(r.text)
    return kind, 200, done and events[0]["choices"][0]["delta"].get("role") == "assistant" and \
        events[-1]["choices"][0]["finish_reason"] is not None


async def client(url: str, seed: int, until: float, max_tokens: int, records: list):
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                kind, status, ok = await one_request(http, rng, max_tokens)
                records.append({"kind": kind, "status": status, "ok": ok, "s": time.perf_counter() - t0})
            except StreamError as exc:
                records.append({"kind": "stream", "status": -2, "ok": False, "s": time.perf_counter() - t0,
                                "error": f"error event: {exc}"})
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                records.append({"kind": "?", "status": -1, "ok": False, "s": time.perf_counter() - t0,
                                "error": f"{type(exc).__name__}: {exc}"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "codegemma", "serve", "--port", str(port), "--max-queue", "64"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        proc = start_server(args.model, port)
        url = f"http://127.0.0.1:{port}"
    try:
        records: list[dict] = []
        t0 = time.monotonic()
        until = t0 + args.seconds

        async def run_all():
            await asyncio.gather(*(client(url, i, until, args.max_tokens, records) for i in range(args.clients)))
        asyncio.run(run_all())
        wall = time.monotonic() - t0
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    latencies = [r["s"] * 1000 for r in records if r["status"] == 200]
    result = {
        "clients": args.clients, "seconds": round(wall, 1), "requests": len(records),
        "status_5xx": sum(1 for r in records if r["status"] >= 500),
        "lost": sum(1 for r in records if r["status"] == -1),
        "garbled": sum(1 for r in records if r["status"] == 200 and not r["ok"]),
        "other_4xx": sum(1 for r in records if 400 <= r["status"] < 500),
        "stream_error_events": sum(1 for r in records if r["status"] == -2),
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "throughput_rps": round(len(latencies) / wall, 2),
        "by_kind": {k: sum(1 for r in records if r["kind"] == k) for k in sorted({r["kind"] for r in records})},
        "errors": sorted({r["error"] for r in records if "error" in r})[:5],
        "batched_generations": next((line.split()[-1] for line in metrics.splitlines()
                                     if line.startswith("codegemma_batch_size_count")), "0"),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["status_5xx"] == 0 and result["lost"] == 0 and result["garbled"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
