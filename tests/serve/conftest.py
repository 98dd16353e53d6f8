"""A server on 127.0.0.1 in a background thread, over a tiny random FIM model or a scripted engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn

from codegemma.complete.pipeline import Completer
from codegemma.engine import Engine, Result
from codegemma.profiles import resolve_profile
from codegemma.serve.app import ServerSettings, create_app
from codegemma.tokenizer import Tokenizer
from codegemma.train import tokenizer_train


def _corpus() -> list[str]:
    root = Path(json.__file__).parent.parent
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("[a-f]*.py"))[:40]]


@pytest.fixture(scope="session")
def fim_tokenizer() -> Tokenizer:
    return Tokenizer(tokenizer_train.train(_corpus(), vocab_size=1024))


@pytest.fixture(scope="session")
def tiny_completer(fim_tokenizer) -> Completer:
    import torch

    from codegemma.config import preset
    from codegemma.model import Gemma

    config = preset("tiny-gemma")
    config.vocab_size, config.max_seq_len = fim_tokenizer.vocab_size, 4096
    model = Gemma(config)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return Completer(Engine(model.eval(), detokenize=fim_tokenizer.decode), fim_tokenizer,
                     resolve_profile(fim_tokenizer, instruction_tuned=False))


class SlowEngine:
    """Emits a fixed text at a fixed pace, honouring cancel and deadline like the real engine."""

    def __init__(self, tokenizer, text: str, seconds_per_token: float, prefill_s: float = 0.0):
        self.config = SimpleNamespace(max_seq_len=4096)
        self.script = tokenizer.encode(text)
        self.pace = seconds_per_token
        self.prefill_s = prefill_s
        self.yielded = 0
        self.batches: list[int] = []

    def stream(self, prompt_ids, params, result=None, cancel=None, deadline=None):
        result = result if result is not None else Result(ids=[], finish_reason="length")
        result.evaluated_tokens = len(prompt_ids)
        time.sleep(self.prefill_s)
        for token in self.script[:params.max_new_tokens]:
            if cancel is not None and cancel():
                result.finish_reason = "cancelled"
                return
            if deadline is not None and time.monotonic() > deadline:
                result.finish_reason = "time_limit"
                return
            time.sleep(self.pace)
            if token in params.stop_ids:
                result.finish_reason, result.stop_id = "stop", token
                return
            result.ids.append(token)
            self.yielded += 1
            yield token
        result.finish_reason = "length"

    def generate_batch(self, prompts, params, cancel=None, deadline=None, seeds=None):
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            res = Result(ids=[], finish_reason="length")
            for _ in self.stream(p, params, res, cancel, deadline):
                pass
            out.append(res)
        return out


class ServerThread:
    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def tiny_server(tiny_completer):
    with ServerThread(create_app(tiny_completer, "tiny-fim")) as server:
        yield server


@pytest.fixture()
def slow_server_factory(fim_tokenizer):
    servers = []

    def make(text="x = 1\n" * 200, pace=0.02, prefill_s=0.0, **settings):
        engine = SlowEngine(fim_tokenizer, text, pace, prefill_s)
        completer = Completer(engine, fim_tokenizer, resolve_profile(fim_tokenizer))
        server = ServerThread(create_app(completer, "slow", ServerSettings(**settings))).__enter__()
        server.engine = engine
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.__exit__()


@pytest.fixture()
def scripted_completer(fim_tokenizer) -> Completer:
    """A completer whose engine answers with the same text at once, whatever the prompt."""
    return Completer(SlowEngine(fim_tokenizer, "value", 0.0), fim_tokenizer, resolve_profile(fim_tokenizer))
