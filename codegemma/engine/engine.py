"""The generation engine: token ids in, token ids out.

One `Engine` wraps one model. It keeps the KV cache of its last single-sequence request, so a
request that starts with the same tokens (an editor asking again a few keystrokes later) only
computes the new ones. An engine runs one request at a time; callers serialize access.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch

from codegemma.engine.sampling import SamplingParams, choose, make_generator
from codegemma.errors import CodegemmaError
from codegemma.kv_cache import KVCache
from codegemma.model import Gemma


@dataclass
class Result:
    ids: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "stop" | "length" | "cancelled" | "time_limit"
    stop_id: int | None = None  # the stop token id that ended generation
    stop_string: str | None = None  # the stop string found in the decoded output
    cached_tokens: int = 0  # prompt tokens whose KV came from the previous request
    evaluated_tokens: int = 0  # prompt tokens computed for this request
    prefill_s: float = 0.0
    decode_s: float = 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Engine:
    def __init__(self, model: Gemma, detokenize: Callable[[list[int]], str] | None = None,
                 prefill_chunk: int = 1024, reuse_prefix: bool = True, cache_granularity: int = 1024,
                 cache_slack: int | None = None):
        self.model = model.eval()
        self.config = model.config
        self.detokenize = detokenize
        self.prefill_chunk = prefill_chunk
        self.reuse_prefix = reuse_prefix
        self.cache_granularity = cache_granularity
        self.cache_slack = cache_slack  # how far back the sliding-window ring can roll (default: one window)
        self._cache: KVCache | None = None
        self._cached_ids: list[int] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.model.compute_dtype

    # ---- single sequence ----------------------------------------------------------------
    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, result: Result | None = None,
               cancel: Callable[[], bool] | None = None, deadline: float | None = None) -> Iterator[int]:
        """Yield generated token ids one by one. `result`, if given, is filled in as generation goes."""
        result = result if result is not None else Result(ids=[], finish_reason="length")
        prompt = self._check_prompt(prompt_ids, params)
        with torch.inference_mode():
            t0 = time.perf_counter()
            try:
                logits = self._prefill(prompt, params, result)
            except BaseException:
                self.reset()
                raise
            result.prefill_s = time.perf_counter() - t0
            generator = None if params.greedy else make_generator(params.seed)
            context = torch.tensor(prompt) if params.repetition_penalty != 1.0 else None
            t1 = time.perf_counter()
            try:
                for _ in range(params.max_new_tokens):
                    if cancel is not None and cancel():
                        result.finish_reason = "cancelled"
                        return
                    if deadline is not None and time.monotonic() > deadline:
                        result.finish_reason = "time_limit"
                        return
                    token = choose(logits, params, generator, context)
                    if token in params.stop_ids:
                        result.finish_reason, result.stop_id = "stop", token
                        return
                    result.ids.append(token)
                    if context is not None:
                        context = torch.cat((context, torch.tensor([token])))
                    yield token
                    if self._hit_stop_string(result, params):
                        result.finish_reason = "stop"
                        return
                    if len(result.ids) == params.max_new_tokens:
                        break
                    logits = self._step(token, params)
                result.finish_reason = "length"
            except GeneratorExit:
                result.finish_reason = "cancelled"
                raise
            finally:
                result.decode_s = time.perf_counter() - t1

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, cancel: Callable[[], bool] | None = None,
                 deadline: float | None = None) -> Result:
        result = Result(ids=[], finish_reason="length")
        for _ in self.stream(prompt_ids, params, result, cancel, deadline):
            pass
        return result

    def _check_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> list[int]:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise CodegemmaError("the prompt is empty (it needs at least one token, e.g. <bos>)")
        bad = next((t for t in prompt if not 0 <= t < self.config.vocab_size), None)
        if bad is not None:
            raise CodegemmaError(f"token id {bad} is outside the vocabulary (size {self.config.vocab_size})")
        if len(prompt) + params.max_new_tokens > self.config.max_seq_len:
            raise CodegemmaError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                                 f"the model's context of {self.config.max_seq_len} tokens")
        return prompt

    def _head(self, params: SamplingParams) -> Callable[[torch.Tensor], torch.Tensor]:
        """Hidden states -> logits. Plain greedy decoding needs only the argmax, which the model
        may compute from a fraction of the head (Gemma.argmax_logits); a repetition penalty
        rescales logits before the argmax, so it needs them all."""
        if params.greedy and params.repetition_penalty == 1.0:
            return self.model.argmax_logits
        return self.model.logits

    def _forward(self, ids: torch.Tensor, params: SamplingParams, cache: KVCache,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of the last position of each row."""
        hidden = self.model(ids, positions=positions, cache=cache, last_only=True, return_hidden=True)
        return self._head(params)(hidden[:, -1])

    def _prefill(self, prompt: list[int], params: SamplingParams, result: Result) -> torch.Tensor:
        needed = len(prompt) + params.max_new_tokens
        reuse = 0
        cache = self._cache
        if self.reuse_prefix and cache is not None and cache.max_len >= needed:
            reuse = min(common_prefix(self._cached_ids, prompt), len(prompt) - 1)
            if cache.can_truncate(reuse):
                cache.truncate(reuse)
            else:
                reuse = 0
        if reuse == 0:
            size = min(self.config.max_seq_len, -(-needed // self.cache_granularity) * self.cache_granularity)
            cache = KVCache(self.config, 1, size, dtype=self.dtype, device=self.model.device,
                            slack=self.cache_slack)
        self._cache = cache
        self._cached_ids = prompt[:reuse]
        result.cached_tokens, result.evaluated_tokens = reuse, len(prompt) - reuse
        logits = None
        for start in range(reuse, len(prompt), self.prefill_chunk):
            chunk = prompt[start:start + self.prefill_chunk]
            logits = self._forward(torch.tensor([chunk]), params, cache)
            self._cached_ids += chunk
        return logits[0]

    def _step(self, token: int, params: SamplingParams) -> torch.Tensor:
        self._cached_ids.append(token)  # the cache holds exactly the tokens fed so far
        return self._forward(torch.tensor([[token]]), params, self._cache)[0]

    def _hit_stop_string(self, result: Result, params: SamplingParams) -> bool:
        if not params.stop_strings or self.detokenize is None:
            return False
        window = max(len(s) for s in params.stop_strings) + 8  # tokens: each is at least one character
        tail = self.detokenize(result.ids[-window:])
        for s in params.stop_strings:
            if s in tail:
                result.stop_string = s
                return True
        return False

    def reset(self):
        """Forget the cached prefix (e.g. after swapping weights)."""
        self._cache, self._cached_ids = None, []

    # ---- batches ------------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                       cancel: Callable[[], bool] | None = None, deadline: float | None = None,
                       seeds: Sequence[int | None] | None = None) -> list[Result]:
        """Generate for several prompts at once (left-padded); greedy output equals one-at-a-time.

        Sampling draws row i from `seeds[i]` when given (rows of different requests, each as
        reproducible as alone), else from `params.seed + i` (several samples of one request)."""
        if seeds is None:
            seeds = [None if params.seed is None else params.seed + i for i in range(len(prompts))]
        if len(prompts) == 1:
            return [self.generate(prompts[0], replace(params, seed=seeds[0]), cancel, deadline)]
        checked = [self._check_prompt(p, params) for p in prompts]
        B, longest = len(checked), max(len(p) for p in checked)
        ids = torch.full((B, longest), self.config.pad_id, dtype=torch.long)
        positions = torch.full((B, longest), -1, dtype=torch.long)
        for row, p in enumerate(checked):
            ids[row, longest - len(p):] = torch.tensor(p)
            positions[row, longest - len(p):] = torch.arange(len(p))
        results = [Result(ids=[], finish_reason="length", evaluated_tokens=len(p)) for p in checked]
        generators = [None if params.greedy else make_generator(seed) for seed in seeds]
        contexts = [torch.tensor(p) for p in checked] if params.repetition_penalty != 1.0 else [None] * B
        done = [False] * B
        with torch.inference_mode():
            t0 = time.perf_counter()
            cache = KVCache(self.config, B, longest + params.max_new_tokens, dtype=self.dtype,
                            device=self.model.device)
            logits = self._forward(ids, params, cache, positions)
            prefill_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            next_pos = torch.tensor([len(p) for p in checked])
            live = list(range(B))  # the original rows still in the batch, in batch order
            for _ in range(params.max_new_tokens):
                if cancel is not None and cancel():
                    self._finish_all(results, done, "cancelled")
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self._finish_all(results, done, "time_limit")
                    break
                tokens = torch.full((len(live), 1), self.config.pad_id, dtype=torch.long)
                for i, row in enumerate(live):
                    token = choose(logits[i], params, generators[row], contexts[row])
                    res = results[row]
                    if token in params.stop_ids:
                        res.finish_reason, res.stop_id, done[row] = "stop", token, True
                        continue
                    res.ids.append(token)
                    tokens[i, 0] = token
                    if contexts[row] is not None:
                        contexts[row] = torch.cat((contexts[row], torch.tensor([token])))
                    if self._hit_stop_string(res, params):
                        res.finish_reason, done[row] = "stop", True
                    elif len(res.ids) == params.max_new_tokens:
                        done[row] = True
                if all(done):
                    break
                if any(done[row] for row in live):  # finished rows leave the batch: later steps skip them
                    keep = [i for i, row in enumerate(live) if not done[row]]
                    index = torch.tensor(keep)
                    cache.keep_rows(index)
                    tokens, next_pos = tokens[index], next_pos[index]
                    live = [live[i] for i in keep]
                logits = self._forward(tokens, params, cache, next_pos[:, None].clone())
                next_pos += 1
            decode_s = time.perf_counter() - t1
        for res in results:
            res.prefill_s, res.decode_s = prefill_s, decode_s
        return results

    @staticmethod
    def _finish_all(results, done, reason):
        for res, d in zip(results, done):
            if not d:
                res.finish_reason = reason
