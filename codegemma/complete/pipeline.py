"""Text in, text out: one completion at a cursor, from prompt to filtered insertion text.

    request ──► CRLF→LF ──► prompt (budget, FIM or prefix-only) ──► engine (stops on ids)
            ──► detokenize ──► stop texts, user stops, filters (checked at every new line, so
                generation ends as soon as a filter cuts) ──► LF→CRLF ──► Completion

The engine reuses the KV cache of the longest common prefix with the previous request, so the
pipeline keeps prompts stable while a user types (see budget.py and the SPM default).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from codegemma.complete.budget import MIN_PROMPT_TOKENS, Budget
from codegemma.complete.filters import PIPELINE, FilterContext, apply_filters, decide_multiline
from codegemma.complete.language import syntax_for
from codegemma.complete.newlines import restore_newlines, to_lf, uses_crlf
from codegemma.complete.prompt import Prompt, build_prompt
from codegemma.engine import Engine, Result, SamplingParams
from codegemma.errors import CodegemmaError
from codegemma.profiles import ModelProfile
from codegemma.tokenizer import StreamDecoder, Tokenizer

SINGLE_LINE_MAX_TOKENS = 48
CUT_FILTERS = PIPELINE[:-1]  # every filter but the final whitespace trim, which cuts nothing real


@dataclass
class CompletionRequest:
    prefix: str
    suffix: str = ""
    path: str | None = None
    language: str | None = None
    context: Sequence[tuple[str, str]] = ()  # other files: (path, content)
    max_new_tokens: int | None = None  # None: the profile's default for the line mode
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    multiline: bool | None = None  # None: decided from the cursor position and language
    mode: str | None = None  # "fim" | "prefix-only" | None (FIM when the model has it)
    fim_order: str | None = None  # "psm" | "spm" | None (the profile's)
    middle_start: str = ""  # text the completion continues (llama.cpp /infill `prompt`)
    min_indent: int | None = None  # llama.cpp n_indent
    max_prompt_tokens: int | None = None
    predict_time_limit_s: float | None = None  # soft: ends generation at the next newline after this long


@dataclass
class Completion:
    text: str
    mode: str
    order: str | None
    multiline: bool
    finish_reason: str  # stop | length | filtered | cancelled | time_limit
    stop_type: str  # llama.cpp: eos | word | limit | none
    prompt_tokens: int
    cached_tokens: int
    evaluated_tokens: int
    generated_tokens: int
    prompt_ms: float
    predicted_ms: float
    truncated: bool = False
    raw_text: str = ""
    context_paths: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    prompt: Prompt
    ctx: FilterContext
    params: SamplingParams
    crlf: bool


class Completer:
    """One model's completion service; calls into the engine are serialized by a lock."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, profile: ModelProfile, budget: Budget = Budget()):
        self.engine = engine
        self.tokenizer = tokenizer
        self.profile = profile
        self.budget = budget
        self.lock = threading.Lock()

    # ---- preparation ----------------------------------------------------------------------
    def prepare(self, req: CompletionRequest) -> Prepared:
        crlf = uses_crlf(req.prefix + req.suffix)
        prefix, suffix = to_lf(req.prefix), to_lf(req.suffix)
        context = [(p, to_lf(c)) for p, c in req.context]
        syntax = syntax_for(req.path, req.language)
        multiline = req.multiline if req.multiline is not None else decide_multiline(prefix, suffix, syntax)
        sampling = self.profile.fim_sampling
        max_new = req.max_new_tokens if req.max_new_tokens is not None else (
            sampling.max_new_tokens if multiline else SINGLE_LINE_MAX_TOKENS)
        if max_new < 0:
            raise CodegemmaError("max_new_tokens must be >= 0")
        room = self.engine.config.max_seq_len - max_new
        wanted = req.max_prompt_tokens or self.budget.max_prompt_tokens
        if room < MIN_PROMPT_TOKENS:
            raise CodegemmaError(f"max_new_tokens {max_new} leaves no room for a prompt in the model's "
                                 f"{self.engine.config.max_seq_len}-token context")
        if wanted < MIN_PROMPT_TOKENS:
            raise CodegemmaError(f"max_prompt_tokens {wanted} is too small: a prompt needs at least "
                                 f"{MIN_PROMPT_TOKENS} tokens")
        max_prompt = min(wanted, room)
        prompt = build_prompt(self.tokenizer, self.profile, prefix, suffix, path=req.path, context=context,
                              syntax=syntax, budget=replace(self.budget, max_prompt_tokens=max_prompt), mode=req.mode,
                              order=req.fim_order, middle_start=to_lf(req.middle_start))
        stop_texts = tuple(self.profile.stop_texts)
        ctx = FilterContext(prefix=prefix + to_lf(req.middle_start), suffix=suffix, syntax=syntax,
                            multiline=multiline, stop_texts=stop_texts, min_indent=req.min_indent)
        params = SamplingParams(
            max_new_tokens=max_new,
            temperature=sampling.temperature if req.temperature is None else req.temperature,
            top_k=sampling.top_k if req.top_k is None else req.top_k,
            top_p=sampling.top_p if req.top_p is None else req.top_p,
            repetition_penalty=sampling.repetition_penalty, seed=req.seed, stop_ids=self.profile.stop_ids,
            stop_strings=tuple(s for s in req.stop if s) + (() if multiline else ("\n",)))
        return Prepared(prompt, ctx, params, crlf)

    # ---- one request, token by token ------------------------------------------------------
    def run(self, req: CompletionRequest, on_delta: Callable[[str], None] | None = None,
            cancel: Callable[[], bool] | None = None, deadline: float | None = None) -> Completion:
        """Complete `req`; `on_delta` receives filtered text as whole lines become final."""
        prep = self.prepare(req)
        user_stops = tuple(s for s in req.stop if s)
        result = Result(ids=[], finish_reason="length")
        decoder = StreamDecoder(self.tokenizer, skip_special=False)
        raw = ""
        emitted = ""
        reason = None
        stop_word = False
        t_first = None
        with self.lock:
            t0 = time.perf_counter()
            tokens = self.engine.stream(prep.prompt.ids, replace(prep.params, stop_strings=()), result, cancel, deadline)
            try:
                for token in tokens:
                    t_first = t_first or time.perf_counter()
                    piece = decoder.push(token)
                    if not piece:
                        continue
                    raw += piece
                    if any(s in raw for s in prep.ctx.stop_texts):
                        reason = "stop"
                        break
                    hit = [raw.index(s) for s in user_stops if s in raw]
                    if hit:
                        raw, reason, stop_word = raw[:min(hit)], "stop", True
                        break
                    if not prep.ctx.multiline and "\n" in raw:
                        reason = "stop"
                        break
                    if "\n" in piece:
                        lines = raw[:raw.rfind("\n")]
                        if apply_filters(lines, prep.ctx, CUT_FILTERS) != lines:
                            reason = "filtered"
                            break
                        if on_delta is not None:
                            emitted = self._emit(apply_filters(lines, prep.ctx), emitted, prep.crlf, on_delta)
                        if (req.predict_time_limit_s is not None
                                and time.perf_counter() - t_first > req.predict_time_limit_s):
                            raw, reason = lines, "time_limit"
                            break
            finally:
                tokens.close()
            total = time.perf_counter() - t0
        text = apply_filters(raw, prep.ctx)
        if on_delta is not None:
            self._emit(text, emitted, prep.crlf, on_delta)
        finish = reason or result.finish_reason
        if result.stop_id is not None:
            stop_type = "eos"
        elif finish in ("stop", "filtered"):
            stop_type = "word"
        elif finish == "length":
            stop_type = "limit"
        else:
            stop_type = "none"
        if stop_word:
            stop_type = "word"
        return Completion(
            text=restore_newlines(text, prep.crlf), mode=prep.prompt.mode, order=prep.prompt.order,
            multiline=prep.ctx.multiline, finish_reason=finish, stop_type=stop_type,
            prompt_tokens=len(prep.prompt.ids), cached_tokens=result.cached_tokens,
            evaluated_tokens=result.evaluated_tokens, generated_tokens=len(result.ids),
            prompt_ms=result.prefill_s * 1000, predicted_ms=max(total - result.prefill_s, 0.0) * 1000,
            truncated=prep.prompt.truncated, raw_text=raw, context_paths=prep.prompt.context_paths)

    @staticmethod
    def _emit(text: str, emitted: str, crlf: bool, on_delta: Callable[[str], None]) -> str:
        if text.startswith(emitted) and len(text) > len(emitted):
            on_delta(restore_newlines(text[len(emitted):], crlf))
            return text
        return emitted

    # ---- several requests in one batch ------------------------------------------------------
    def run_batch(self, reqs: Sequence[CompletionRequest], cancel: Callable[[], bool] | None = None,
                  deadline: float | None = None) -> list[Completion]:
        """Complete several requests, one batched forward pass per token for each group of requests
        that share sampling settings (greedy single-line requests usually do)."""
        preps = [self.prepare(r) for r in reqs]
        groups: dict[str, list[int]] = {}
        for i, prep in enumerate(preps):
            # seeds are per row, so requests that differ only in their seed share a batch
            groups.setdefault(repr(replace(prep.params, seed=None)), []).append(i)
        results: list[Result | None] = [None] * len(reqs)
        with self.lock:
            for members in groups.values():
                params = preps[members[0]].params
                rows = [preps[i].prompt.ids for i in members]
                if params.greedy:  # nothing random: seeds play no part
                    batch = self.engine.generate_batch(rows, params, cancel, deadline)
                else:  # each request samples from its own seed, exactly as it would alone
                    batch = self.engine.generate_batch(rows, params, cancel, deadline,
                                                       seeds=[preps[i].params.seed for i in members])
                for i, res in zip(members, batch):
                    results[i] = res
        return [self._finish_batched(req, prep, res) for req, prep, res in zip(reqs, preps, results)]

    def _finish_batched(self, req: CompletionRequest, prep: Prepared, res: Result) -> Completion:
        raw = self.tokenizer.decode(res.ids, skip_special=False)
        user = [raw.index(s) for s in req.stop if s and s in raw]
        raw = raw[:min(user)] if user else raw
        text = apply_filters(raw, prep.ctx)
        stop_type = "eos" if res.stop_id is not None else "word" if res.finish_reason == "stop" else (
            "limit" if res.finish_reason == "length" else "none")
        return Completion(
            text=restore_newlines(text, prep.crlf), mode=prep.prompt.mode, order=prep.prompt.order,
            multiline=prep.ctx.multiline, finish_reason=res.finish_reason, stop_type=stop_type,
            prompt_tokens=len(prep.prompt.ids), cached_tokens=res.cached_tokens,
            evaluated_tokens=res.evaluated_tokens, generated_tokens=len(res.ids), prompt_ms=res.prefill_s * 1000,
            predicted_ms=res.decode_s * 1000, truncated=prep.prompt.truncated, raw_text=raw,
            context_paths=prep.prompt.context_paths)
