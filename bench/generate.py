"""Generation speed on the CPU: codegemma's dtypes against transformers and llama.cpp, in one run.

For every runner (codegemma float32 / bfloat16 / int8 / int4, transformers float32 / bfloat16 on
the same GGUF, llama.cpp through llama-cpp-python when it is installed) a fresh process:
  - loads the default model (cold load: the `load` call; imports are timed apart),
  - streams `--repeats` greedy generations of `--new-tokens` from the same `--prompt-tokens`-token
    code prompt (after one untimed warm-up), with prefix caching off,
  - reports prefill tokens/s (prompt tokens / time to the first token), decode tokens/s (tokens
    after the first / time from the first to the last), medians over the repeats, and peak RSS.
All runners use `--threads` threads. With `--quality`, codegemma's dtypes and llama.cpp are also
scored by teacher-forced argmax agreement with codegemma float32 on the agreement set of
tests/test_default_model.py (one token at a time, as decoding runs).

    python bench/generate.py [--repeats 5] [--threads 2] [--runners ours-int8,llama.cpp,...]
                             [--quality] [--json docs/results/generate.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNNERS = ["ours-float32", "ours-bfloat16", "ours-int8", "ours-int4", "transformers-float32",
           "transformers-bfloat16", "llama.cpp"]
PROMPT_SOURCE = "argparse"  # a long, ordinary Python module: the code prompt
AGREEMENT_SOURCES = ["textwrap", "heapq", "bisect", "json.decoder", "shlex"]  # as tests/test_default_model.py


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_ids(tokenizer, n: int) -> list[int]:
    import importlib

    ids = tokenizer.encode(inspect.getsource(importlib.import_module(PROMPT_SOURCE)), add_bos=True)
    if len(ids) < n:
        raise SystemExit(f"the prompt source has only {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def time_stream(tokens, n_prompt: int) -> tuple[float, float, int]:
    """(prefill tokens/s, decode tokens/s, tokens generated) from an iterator of generated tokens."""
    start = time.perf_counter()
    first = last = None
    count = 0
    for _ in tokens:
        last = time.perf_counter()
        first = first or last
        count += 1
    decode = (count - 1) / (last - first) if count > 1 else float("nan")
    return n_prompt / (first - start), decode, count


# ---- runners (each in its own process) -------------------------------------------------------
def run_ours(dtype: str, args) -> dict:
    t0 = time.perf_counter()
    import torch

    from codegemma.checkpoints import load
    from codegemma.engine import Engine, SamplingParams
    from codegemma.quant import weight_bytes_per_token

    torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    loaded = load(None, dtype=dtype, progress=False)
    load_s = time.perf_counter() - t1
    ids = prompt_ids(loaded.tokenizer, args.prompt_tokens)
    engine = Engine(loaded.model, reuse_prefix=False)
    params = SamplingParams(max_new_tokens=args.new_tokens)
    runs = [time_stream(engine.stream(ids, params), len(ids)) for _ in range(args.repeats + 1)][1:]
    output = engine.generate(ids, params).ids
    return summary(runs, load_s=load_s, import_s=t1 - t0, bytes_per_token=weight_bytes_per_token(loaded.model),
                   output=output)


def run_transformers(dtype: str, args) -> dict:
    t0 = time.perf_counter()
    import threading

    import torch
    import transformers

    from codegemma.checkpoints.loading import default_gguf_path
    from codegemma.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    path = default_gguf_path()
    directory, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                              dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t1
    ids = prompt_ids(Tokenizer.from_gguf(path), args.prompt_tokens)

    class Tokens(transformers.generation.streamers.BaseStreamer):
        """Hands generated tokens to the timing loop as they come (the first `put` is the prompt)."""

        def __init__(self):
            self.queue, self.prompt_seen, self.done = [], False, threading.Event()
            self.cond = threading.Condition()

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            with self.cond:
                self.queue.append(int(value.reshape(-1)[0]))
                self.cond.notify()

        def end(self):
            with self.cond:
                self.done.set()
                self.cond.notify()

        def __iter__(self):
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.queue or self.done.is_set())
                    if self.queue:
                        yield self.queue.pop(0)
                    elif self.done.is_set():
                        return

    def one_run():
        streamer = Tokens()
        kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      streamer=streamer, pad_token_id=0)
        worker = threading.Thread(target=lambda: model.generate(torch.tensor([ids]), **kwargs))
        worker.start()
        timing = time_stream(iter(streamer), len(ids))
        worker.join()
        return timing

    with torch.inference_mode():
        runs = [one_run() for _ in range(args.repeats + 1)][1:]
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return summary(runs, load_s=load_s, import_s=t1 - t0, bytes_per_token=nbytes)


def run_llama_cpp(args) -> dict:
    t0 = time.perf_counter()
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (see docs/inference.md for the build flags)"}
    from codegemma.checkpoints.loading import default_gguf_path
    from codegemma.tokenizer import Tokenizer

    t1 = time.perf_counter()
    path = default_gguf_path()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=args.prompt_tokens + args.new_tokens + 16, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=args.prompt_tokens, verbose=False)
    load_s = time.perf_counter() - t1
    ids = prompt_ids(Tokenizer.from_gguf(path), args.prompt_tokens)

    import numpy as np

    def last_logits():  # the raw logits of the last evaluated token: greedy is their argmax, as for us
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    def tokens():
        llm.reset()  # no prompt cache: every run prefills the whole prompt
        llm.eval(ids)
        for i in range(args.new_tokens):
            token = int(last_logits().argmax())
            yield token
            if i + 1 < args.new_tokens:
                llm.eval([token])

    runs = [time_stream(tokens(), len(ids)) for _ in range(args.repeats + 1)][1:]
    return summary(runs, load_s=load_s, import_s=t1 - t0, bytes_per_token=llama_cpp.llama_model_size(llm.model))


def summary(runs, **extra) -> dict:
    return {"prefill_tok_s": statistics.median(r[0] for r in runs), "decode_tok_s": statistics.median(r[1] for r in runs),
            "prefill_all": [r[0] for r in runs], "decode_all": [r[1] for r in runs],
            "generated": runs[0][2], "peak_rss_mb": peak_rss_mb(), **extra}


DECODE_ROWS = 1  # tokens per forward when measuring agreement: what decoding computes


def reference_argmax() -> list[tuple[list[int], "torch.Tensor"]]:
    """The agreement set's token ids and the argmax of one plain float32 forward over each prompt."""
    import importlib

    import torch

    from codegemma.checkpoints import load

    reference = load(None, progress=False)
    out = []
    with torch.inference_mode():
        for name in AGREEMENT_SOURCES:
            ids = reference.tokenizer.encode(inspect.getsource(importlib.import_module(name)), add_bos=True)[:420]
            out.append((ids, reference.model(torch.tensor([ids]))[0].argmax(-1)))
    return out


def agreement(dtype: str) -> dict:
    """Teacher-forced argmax agreement of `dtype` with float32 on the agreement set.

    The reference runs each prompt in one float32 forward (plain float32 weights). The measured
    model runs it through its KV cache one token at a time, so it takes the paths decoding takes
    (block kernels and C decoder layers, quantized kernels), not the ones a long prompt takes."""
    import torch

    from codegemma.checkpoints import load
    from codegemma.kv_cache import KVCache

    other = load(None, dtype=dtype, progress=False)
    agree = total = 0
    with torch.inference_mode():
        for ids, want in reference_argmax():
            cache = KVCache(other.config, 1, len(ids), dtype=other.model.compute_dtype)
            got = torch.cat([other.model(torch.tensor([ids[i:i + DECODE_ROWS]]), cache=cache)[0].argmax(-1)
                             for i in range(0, len(ids), DECODE_ROWS)])
            agree += int((want == got).sum())
            total += len(ids)
    return {"agreement": agree / total, "agreement_tokens": total}


def llama_cpp_agreement() -> dict:
    """The same agreement for llama.cpp: its raw logits, one token at a time, against our float32."""
    import llama_cpp
    import numpy as np

    from codegemma.checkpoints.loading import default_gguf_path

    pairs = reference_argmax()
    llm = llama_cpp.Llama(model_path=str(default_gguf_path()), n_ctx=max(len(ids) for ids, _ in pairs),
                          logits_all=True, verbose=False)
    agree = total = 0
    for ids, want in pairs:
        llm.reset()
        for i in range(0, len(ids), DECODE_ROWS):
            llm.eval(ids[i:i + DECODE_ROWS])
        got = np.asarray(llm.scores[:len(ids)]).argmax(-1)
        agree += int((got == want.numpy()).sum())
        total += len(ids)
    return {"agreement": agree / total, "agreement_tokens": total}


def worker(args) -> dict:
    runner = args.worker
    if runner.startswith("quality:"):
        import torch

        torch.set_num_threads(args.threads)
        measured = runner.split(":", 1)[1]
        return llama_cpp_agreement() if measured == "llama.cpp" else agreement(measured)
    if runner.startswith("ours-"):
        return run_ours(runner.removeprefix("ours-"), args)
    if runner.startswith("transformers-"):
        return run_transformers(runner.removeprefix("transformers-"), args)
    if runner == "llama.cpp":
        return run_llama_cpp(args)
    raise SystemExit(f"unknown runner {runner!r}; expected one of {', '.join(RUNNERS)}")


def spawn(runner: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", runner, "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               OMP_WAIT_POLICY=args.omp_wait_policy)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == -4 and runner == "llama.cpp":  # SIGILL
        return {"skipped": "llama.cpp crashed with an illegal instruction: llama-cpp-python was built for CPU "
                           "features this CPU lacks (see docs/inference.md for the build flags)"}
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


# ---- report ----------------------------------------------------------------------------------
def table(results: dict) -> str:
    def ratio(name, key, ref):
        r = results.get(ref, {})
        return f"{results[name][key] / r[key]:.2f}x" if key in r and key in results[name] else "-"

    head = ("| runner | weights MB/token | prefill tok/s | decode tok/s | decode vs tf f32 | prefill vs tf bf16 "
            "| decode vs llama.cpp | prefill vs llama.cpp | load s | peak RSS MB | agreement |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        if "prefill_tok_s" not in r:
            rows.append(f"| {name} | {r.get('skipped') or r.get('error')} |" + " |" * 9)
            continue
        agree = f"{r['agreement']:.2%}" if "agreement" in r else "-"
        rows.append(f"| {name} | {r['bytes_per_token'] / 1e6:.0f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} "
                    f"| {ratio(name, 'decode_tok_s', 'transformers-float32')} "
                    f"| {ratio(name, 'prefill_tok_s', 'transformers-bfloat16')} "
                    f"| {ratio(name, 'decode_tok_s', 'llama.cpp')} | {ratio(name, 'prefill_tok_s', 'llama.cpp')} "
                    f"| {r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | {agree} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated, from: " + ", ".join(RUNNERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--quality", action="store_true", help="also measure argmax agreement with float32")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"],
                    help="for every runner; spinning OpenMP threads collapse on a shared, busy CPU (PASSIVE)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    results = {}
    for runner in runners:
        print(f"running {runner} ...", file=sys.stderr, flush=True)
        results[runner] = spawn(runner, args)
        if args.quality and "prefill_tok_s" in results[runner] and not runner.startswith("transformers-"):
            results[runner].update(spawn("quality:" + runner.removeprefix("ours-"), args))
        if "error" in results[runner] or "skipped" in results[runner]:
            print(f"  {runner}: {results[runner].get('skipped') or results[runner].get('error')}", file=sys.stderr)
    print(table(results))
    if args.json:
        info = {"command": "python bench/generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "repeats": args.repeats, "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens, "results": results}
        out = Path(args.json)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
