"""Completion latency while typing: a request per burst of keystrokes, with and without prefix-cache reuse.

Replays typing through a real source file: the cursor starts after about `--context` tokens of
the file, then the next characters of the file are typed in bursts of 2-6 characters, each burst
sending a single-line completion request with the whole file around the cursor (the prompt is
trimmed to the context budget). Measures end-to-end latency of `Completer.run` (prompt building,
prefill, decoding, filters) on the default model, once with the engine's prefix reuse and once
without. Where llama-cpp-python is installed, llama.cpp with prompt caching runs the same prompts.

    python bench/completion_latency.py [--model M] [--dtype int8] [--bursts 40] [--context 1500] [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import sys
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def typing_bursts(text: str, start: int, bursts: int, seed: int = 0) -> list[int]:
    """Cursor offsets after each burst of 2-6 typed characters."""
    rng = random.Random(seed)
    cursor, out = start, []
    for _ in range(bursts):
        cursor = min(cursor + rng.randint(2, 6), len(text))
        out.append(cursor)
    return out


def run_codegemma(loaded, text: str, cursors: list[int], path: str, context: int, max_new: int, reuse: bool):
    from codegemma.complete.budget import Budget
    from codegemma.complete.pipeline import Completer, CompletionRequest
    from codegemma.engine import Engine
    from codegemma.profiles import resolve_profile

    engine = Engine(loaded.model, detokenize=loaded.tokenizer.decode, reuse_prefix=reuse)
    completer = Completer(engine, loaded.tokenizer, resolve_profile(loaded.tokenizer, family=loaded.config.family),
                          Budget(max_prompt_tokens=context))
    rows = []
    for i, cursor in enumerate([cursors[0]] + cursors):  # the first request warms up (not counted)
        req = CompletionRequest(prefix=text[:cursor], suffix=text[cursor:], path=path, multiline=False,
                                max_new_tokens=max_new)
        t0 = time.perf_counter()
        out = completer.run(req)
        ms = (time.perf_counter() - t0) * 1000
        if i:
            rows.append({"ms": ms, "prompt_tokens": out.prompt_tokens, "cached": out.cached_tokens,
                         "evaluated": out.evaluated_tokens, "generated": out.generated_tokens, "mode": out.mode})
    return rows


def run_llama_cpp(gguf: str, prompts: list[str], max_new: int, context: int):
    try:
        from llama_cpp import Llama, LlamaRAMCache
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf), n_ctx=context + max_new + 64, n_threads=2, verbose=False)
    llm.set_cache(LlamaRAMCache())
    rows = []
    for i, prompt in enumerate([prompts[0]] + prompts):
        t0 = time.perf_counter()
        llm(prompt, max_tokens=max_new, temperature=0.0, stop=["\n"])
        if i:
            rows.append({"ms": (time.perf_counter() - t0) * 1000})
    return rows


def summary(rows: list[dict]) -> dict:
    ms = [r["ms"] for r in rows]
    out = {"n": len(ms), "p50_ms": round(percentile(ms, 0.5), 1), "p95_ms": round(percentile(ms, 0.95), 1),
           "mean_ms": round(statistics.fmean(ms), 1)}
    if "cached" in rows[0]:
        out["mean_prompt_tokens"] = round(statistics.fmean(r["prompt_tokens"] for r in rows), 1)
        out["mean_evaluated_tokens"] = round(statistics.fmean(r["evaluated"] for r in rows), 1)
        out["mean_generated_tokens"] = round(statistics.fmean(r["generated"] for r in rows), 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled Gemma 3 270M")
    parser.add_argument("--file", default=None, help="source file to type through (default: Python's argparse.py)")
    parser.add_argument("--bursts", type=int, default=40)
    parser.add_argument("--context", type=int, default=1500, help="prompt budget in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, int8 or int4")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import torch

    from codegemma.checkpoints import load

    torch.set_num_threads(max(1, torch.get_num_threads()))
    source = Path(args.file) if args.file else Path(inspect.getfile(argparse))
    text = source.read_text(encoding="utf-8")
    loaded = load(args.model, dtype=args.dtype, progress=False)
    tok = loaded.tokenizer
    # start typing at a line start once the text before it fills the context budget
    start = 0
    for line_start in (i + 1 for i, ch in enumerate(text) if ch == "\n"):
        if len(tok.encode(text[:line_start])) >= args.context * 1.2:
            start = line_start
            break
    cursors = typing_bursts(text, start, args.bursts)
    results = {"model": args.model or "gemma3-270m (default)", "dtype": args.dtype, "file": source.name,
               "bursts": args.bursts,
               "context_tokens": args.context, "max_new_tokens": args.max_new_tokens,
               "threads": torch.get_num_threads()}
    for reuse in (True, False):
        rows = run_codegemma(loaded, text, cursors, source.name, args.context, args.max_new_tokens, reuse)
        results["with_reuse" if reuse else "without_reuse"] = summary(rows)
        print(f"codegemma {'with' if reuse else 'without'} reuse: {results['with_reuse' if reuse else 'without_reuse']}",
              file=sys.stderr)
    results["speedup_p50"] = round(results["without_reuse"]["p50_ms"] / results["with_reuse"]["p50_ms"], 2)
    if args.model is None or str(args.model).endswith(".gguf"):
        from codegemma.checkpoints.loading import default_gguf_path

        gguf = args.model or default_gguf_path()
        prompts = [tok.decode(_prompt_ids(loaded, text, c, source.name, args.context, args.max_new_tokens))
                   for c in cursors]
        llama = run_llama_cpp(gguf, prompts, args.max_new_tokens, args.context)
        results["llama_cpp_prompt_cache"] = summary(llama) if llama else "llama-cpp-python not installed"

    print(f"{'run':<28}{'p50 ms':>10}{'p95 ms':>10}{'evaluated/prompt tokens':>26}")
    for key in ("with_reuse", "without_reuse", "llama_cpp_prompt_cache"):
        r = results.get(key)
        if isinstance(r, dict):
            tokens = f"{r.get('mean_evaluated_tokens', '-')}/{r.get('mean_prompt_tokens', '-')}"
            print(f"{key:<28}{r['p50_ms']:>10}{r['p95_ms']:>10}{tokens:>26}")
    print(f"speed-up of reuse at p50: {results['speedup_p50']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _prompt_ids(loaded, text, cursor, path, context, max_new):
    from codegemma.complete.budget import Budget
    from codegemma.complete.pipeline import Completer, CompletionRequest
    from codegemma.engine import Engine
    from codegemma.profiles import resolve_profile

    completer = Completer(Engine(loaded.model), loaded.tokenizer, resolve_profile(loaded.tokenizer),
                          Budget(max_prompt_tokens=context))
    prep = completer.prepare(CompletionRequest(prefix=text[:cursor], suffix=text[cursor:], path=path,
                                               multiline=False, max_new_tokens=max_new))
    return prep.prompt.ids[1:]  # without <bos>: llama.cpp adds its own


if __name__ == "__main__":
    sys.exit(main())
