"""Chat turns for instruction-tuned models: the profile's template in, streamed reply text out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from codegemma.complete.pipeline import Completer
from codegemma.engine import Result, SamplingParams
from codegemma.errors import CodegemmaError
from codegemma.fim import encode_pieces
from codegemma.tokenizer import StreamDecoder


@dataclass
class ChatReply:
    text: str
    finish_reason: str  # stop | length | cancelled | time_limit
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int
    seconds: float


def chat_prompt(completer: Completer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    profile = completer.profile
    if profile.chat_template is None:
        raise CodegemmaError(f"model profile {profile.name!r} has no chat template")
    pieces = profile.chat_template.pieces(messages)
    bos = [profile.bos_id] if profile.add_bos and profile.bos_id is not None else []
    return bos + encode_pieces(completer.tokenizer, pieces, dict(profile.chat_ids), literal_text=True)


def run_chat(completer: Completer, messages: Sequence[Mapping[str, str]], params: SamplingParams,
             stop: Sequence[str] = (), on_delta: Callable[[str], None] | None = None, cancel: Callable[[], bool] | None = None,
             deadline: float | None = None) -> ChatReply:
    """One assistant turn. Stop ids come from the profile; user stop strings end the reply early."""
    ids = chat_prompt(completer, messages)
    if len(ids) + params.max_new_tokens > completer.engine.config.max_seq_len:
        raise CodegemmaError(f"messages ({len(ids)} tokens) + max_tokens ({params.max_new_tokens}) exceed the "
                             f"model's context of {completer.engine.config.max_seq_len} tokens")
    params = SamplingParams(**{**params.__dict__, "stop_ids": params.stop_ids | completer.profile.stop_ids,
                               "stop_strings": ()})
    stops = list(completer.profile.stop_texts) + [s for s in stop if s]
    result = Result(ids=[], finish_reason="length")
    decoder = StreamDecoder(completer.tokenizer)
    text, emitted, reason = "", 0, None
    t0 = time.perf_counter()
    with completer.lock:
        tokens = completer.engine.stream(ids, params, result, cancel, deadline)
        try:
            for token in tokens:
                text += decoder.push(token)
                cut = min([text.index(s) for s in stops if s in text], default=None)
                if cut is not None:
                    text, reason = text[:cut], "stop"
                    break
                # hold back a tail that could still become a stop string
                safe = len(text) - max((len(s) - 1 for s in stops), default=0)
                if on_delta is not None and safe > emitted:
                    on_delta(text[emitted:safe])
                    emitted = safe
        finally:
            tokens.close()
    if on_delta is not None and len(text) > emitted:
        on_delta(text[emitted:])
    return ChatReply(text=text, finish_reason=reason or result.finish_reason, prompt_tokens=len(ids),
                     generated_tokens=len(result.ids), cached_tokens=result.cached_tokens,
                     seconds=time.perf_counter() - t0)
