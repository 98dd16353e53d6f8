"""The completion pipeline: id-level stops, filters during generation, modes, CRLF, cache reuse."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from codegemma.complete.pipeline import Completer, CompletionRequest
from codegemma.engine import Engine, Result
from codegemma.errors import CodegemmaError
from codegemma.profiles import resolve_profile


class ScriptedEngine:
    """Plays back fixed output token by token, with the real engine's stop-id and cancel rules."""

    def __init__(self, tokenizer, text: str, max_seq_len: int = 4096):
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.script = tokenizer.encode(text)
        self.prompts: list[list[int]] = []
        self.yielded = 0

    def stream(self, prompt_ids, params, result=None, cancel=None, deadline=None):
        self.prompts.append(list(prompt_ids))
        result.evaluated_tokens = len(prompt_ids)
        for token in self.script[:params.max_new_tokens]:
            if cancel is not None and cancel():
                result.finish_reason = "cancelled"
                return
            if token in params.stop_ids:
                result.finish_reason, result.stop_id = "stop", token
                return
            result.ids.append(token)
            self.yielded += 1
            yield token
        result.finish_reason = "length"

    def generate_batch(self, prompts, params, cancel=None, deadline=None):
        out = []
        for p in prompts:
            res = Result(ids=[], finish_reason="length")
            for _ in self.stream(p, params, res, cancel, deadline):
                pass
            out.append(res)
        return out


def completer(tokenizer, text, **kw):
    return Completer(ScriptedEngine(tokenizer, text, **kw), tokenizer, resolve_profile(tokenizer))


def test_stops_on_the_file_separator_id(fim_tokenizer):
    c = completer(fim_tokenizer, "age = current_year - birth_year<|file_separator|>test_age.py\n<|fim_suffix|>")
    out = c.run(CompletionRequest(prefix="def age(birth_year):\n    current_year = 2024\n    ",
                                  suffix="\n    return age\n", path="age.py"))
    assert out.text == "age = current_year - birth_year"
    assert out.finish_reason == "stop" and out.stop_type == "eos" and out.mode == "fim"
    assert c.engine.yielded == len(fim_tokenizer.encode("age = current_year - birth_year"))


def test_sentinel_spelled_as_text_is_scrubbed_and_stops(fim_tokenizer):
    # a tokenizer that spells the separator as ordinary pieces: the id-level stop cannot fire
    c = completer(fim_tokenizer, "")
    c.engine.script = fim_tokenizer.encode("x + 1") + fim_tokenizer.encode("<|file_sep") + \
        fim_tokenizer.encode("arator|>junk\njunk\njunk\n")
    out = c.run(CompletionRequest(prefix="y = ", suffix="\n", path="a.py"))
    assert out.text == "x + 1" and out.finish_reason == "stop"
    assert c.engine.yielded < len(c.engine.script)


def test_filters_end_generation_early(fim_tokenizer):
    script = "total = sum(xs)\n    return total / len(xs)\n" + "    pass\n" * 40
    c = completer(fim_tokenizer, script)
    out = c.run(CompletionRequest(prefix="def mean(xs):\n    ", suffix="\n    return total / len(xs)\n",
                                  path="stats.py"))
    assert out.text == "total = sum(xs)" and out.finish_reason == "filtered"
    assert c.engine.yielded < len(fim_tokenizer.encode(script)) // 4


def test_single_line_mode_mid_line(fim_tokenizer):
    c = completer(fim_tokenizer, "_sum(a, b)\nprint(1)\nprint(2)\n")
    out = c.run(CompletionRequest(prefix="result = compute", suffix="(a, b)\n", path="a.py"))
    assert out.text == "_sum" and not out.multiline


def test_crlf_file_stays_crlf(fim_tokenizer):
    c = completer(fim_tokenizer, "a = 1\n    b = 2\n    return a + b\n<|file_separator|>")
    c.engine.config.max_seq_len = 4096
    out = c.run(CompletionRequest(prefix="def f():\r\n    ", suffix="\r\n\r\nprint(f())\r\n", path="a.py"))
    assert out.text == "a = 1\r\n    b = 2\r\n    return a + b"
    prompt_text = fim_tokenizer.decode(c.engine.prompts[-1])
    assert "\r" not in prompt_text  # the model sees LF, as in training


def test_streamed_deltas_add_up_to_the_result(fim_tokenizer):
    c = completer(fim_tokenizer, "a = 1\n    b = 2\n    c = 3\n    return a + b + c\n\ndef g():\n    pass\n")
    deltas: list[str] = []
    out = c.run(CompletionRequest(prefix="def f():\n    ", suffix="", path="a.py"), on_delta=deltas.append)
    assert len(deltas) >= 2
    assert "".join(deltas) == out.text == "a = 1\n    b = 2\n    c = 3\n    return a + b + c"


def test_user_stop_strings(fim_tokenizer):
    c = completer(fim_tokenizer, "alpha; beta; gamma")
    out = c.run(CompletionRequest(prefix="x = ", suffix="", path="a.txt", stop=["; g"], multiline=False))
    assert out.text == "alpha; beta" and out.stop_type == "word"


def test_cancel(fim_tokenizer):
    c = completer(fim_tokenizer, "a = 1\n" * 50)
    out = c.run(CompletionRequest(prefix="", suffix="", path="a.py", max_new_tokens=100), cancel=lambda: True)
    assert out.finish_reason == "cancelled" and c.engine.yielded == 0


def test_prefix_only_mode_for_models_without_fim(plain_tokenizer):
    c = completer(plain_tokenizer, "os.listdir(path)\n\n\nif __name__ == '__main__':\n    main()\n")
    out = c.run(CompletionRequest(prefix="import os\n\ndef ls(path):\n    return ",
                                  suffix="\n\nif __name__ == '__main__':\n    main()\n", path="a.py"))
    assert out.mode == "prefix-only" and out.order is None
    assert out.text == "os.listdir(path)"  # suffix-aware: the model's copy of the suffix is cut


def test_batch_matches_single(fim_tokenizer):
    c = completer(fim_tokenizer, "value + 1\nmore\n")
    reqs = [CompletionRequest(prefix=f"x{i} = ", suffix="\n", path="a.py", multiline=False) for i in range(3)]
    batch = c.run_batch(reqs)
    single = [c.run(r) for r in reqs]
    assert [b.text for b in batch] == [s.text for s in single] == ["value + 1"] * 3


@pytest.fixture()
def tiny_completer(fim_tokenizer, tiny_fim_model):
    tiny_fim_model.config.max_seq_len = 2048
    engine = Engine(tiny_fim_model, detokenize=fim_tokenizer.decode)
    return Completer(engine, fim_tokenizer, resolve_profile(fim_tokenizer))


def test_real_engine_reuses_the_cache_while_typing_with_spm(tiny_completer):
    source = "".join(f"def function_{i}(x):\n    return x * {i}\n\n" for i in range(30))
    suffix = "\n\nprint(function_3(2))\n"
    typed = "def new_function(argument):\n    return argument"
    cached = []
    for n in range(8, len(typed), 6):
        out = tiny_completer.run(CompletionRequest(prefix=source + typed[:n], suffix=suffix, path="m.py",
                                                   max_new_tokens=4, multiline=False))
        cached.append((out.cached_tokens, out.evaluated_tokens, out.prompt_tokens))
    for c, e, p in cached[1:]:
        assert c + e == p and e <= 12 and c >= p - 12  # only the new keystrokes are computed


def test_real_engine_psm_recomputes_after_the_cursor(tiny_completer):
    source = "".join(f"def function_{i}(x):\n    return x * {i}\n\n" for i in range(10))
    suffix = "".join(f"print(function_{i}(2))\n" for i in range(10))
    first = tiny_completer.run(CompletionRequest(prefix=source + "x = 1", suffix=suffix, fim_order="psm",
                                                 max_new_tokens=2))
    second = tiny_completer.run(CompletionRequest(prefix=source + "x = 12", suffix=suffix, fim_order="psm",
                                                  max_new_tokens=2))
    assert first.order == "psm"
    assert second.evaluated_tokens > len(tiny_completer.tokenizer.encode(suffix)) // 2


def test_a_prompt_budget_too_small_is_blamed_not_max_new_tokens(fim_tokenizer):
    c = completer(fim_tokenizer, "x")
    with pytest.raises(CodegemmaError, match="max_prompt_tokens 3 is too small: a prompt needs at least 9 tokens"):
        c.run(CompletionRequest(prefix="x = ", suffix="\n", path="a.py", max_prompt_tokens=3, max_new_tokens=2))
