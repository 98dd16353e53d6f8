"""BabelCode harness overhead: compile + run seconds per sample, beyond generation.

One sample per problem of multilingual HumanEval for each language (the deliberately wrong
stub for the compiled languages, which compiles like a real answer; Python's reference solution).
Three measurements per language:

- cold:  empty compile cache, the harness as shipped (parallel compiles, C++ precompiled header,
         one javac/kotlinc start per batch); one-off setup (the header) is timed apart;
- warm:  the same samples again (a resumed or repeated run: compiles come from the cache);
- naive: the peer's way (MultiPL-E's executor: one compiler start per sample, no precompiled
         header, no cache), on the first --naive problems only, because it is slow.

    python bench/babelcode.py [--languages cpp,java] [--naive 8] [--out docs/results/babelcode-speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from codegemma.eval.babelcode.build import Builder, default_cache_dir
from codegemma.eval.babelcode.datasets import load
from codegemma.eval.babelcode.execute import evaluate_programs
from codegemma.eval.babelcode.languages import parse_languages
from codegemma.eval.babelcode.languages.python import reference_completion
from codegemma.eval.babelcode.translate import translate
from codegemma.eval.babelcode.verify import agreeing


def samples(lang, questions):
    if lang.name == "python":
        return [lang.program(q, reference_completion(q)) for q in questions]
    return [lang.program(q, lang.stub(q)) for q in questions]


def timed(builder, programs, tests):
    start = time.perf_counter()
    verdicts = evaluate_programs(builder, programs, tests)
    wall = time.perf_counter() - start
    statuses = {}
    for v in verdicts:
        statuses[v.status] = statuses.get(v.status, 0) + 1
    return wall, statuses


def bench_language(lang, questions, naive_n: int, scratch: Path) -> dict:
    programs, tests = samples(lang, questions), [len(q.tests) for q in questions]
    cache = Path(tempfile.mkdtemp(prefix=f"{lang.name}-", dir=scratch))
    builder = Builder(lang, cache)
    setup = 0.0
    if lang.name == "cpp":
        start = time.perf_counter()
        builder._precompiled_header()
        setup = time.perf_counter() - start
    cold, cold_status = timed(builder, programs, tests)
    warm, _ = timed(builder, programs, tests)
    row = {"language": lang.name, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
           "loadavg_1min": round(os.getloadavg()[0], 2), "samples": len(programs), "setup_s": round(setup, 2),
           "cold_s": round(cold, 2), "cold_per_sample_s": round(cold / len(programs), 3),
           "warm_per_sample_s": round(warm / len(programs), 3), "statuses": cold_status}
    if lang.compile_cmd is not None and naive_n:
        naive_cache = Path(tempfile.mkdtemp(prefix=f"{lang.name}-naive-", dir=scratch))
        naive = Builder(lang, naive_cache, batch=False, precompiled_header=False)
        wall, _ = timed(naive, programs[:naive_n], tests[:naive_n])
        shipped = Builder(lang, Path(tempfile.mkdtemp(prefix=f"{lang.name}-same-", dir=scratch)))
        if lang.name == "cpp":
            shipped._precompiled_header()
        same, _ = timed(shipped, programs[:naive_n], tests[:naive_n])
        row.update(naive_samples=naive_n, naive_per_sample_s=round(wall / naive_n, 3),
                   shipped_same_samples_per_sample_s=round(same / naive_n, 3))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="all")
    parser.add_argument("--naive", type=int, default=8, help="problems for the one-start-per-sample peer run")
    parser.add_argument("--out", default="docs/results/babelcode-speed.json")
    args = parser.parse_args()
    items = agreeing(load("humaneval"))
    # Scratch caches live beside the real one: the sandbox hides /tmp, where the header must be seen.
    scratch_root = default_cache_dir().parent
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="babelcode-bench-", dir=scratch_root))
    rows = []
    try:
        for lang in parse_languages(args.languages):
            row = bench_language(lang, translate(items, lang).kept, args.naive, scratch)
            rows.append(row)
            print(f"{row['language']:<11} n={row['samples']:<4} cold {row['cold_per_sample_s']:.3f} s/sample  "
                  f"warm {row['warm_per_sample_s']:.3f}  naive {row.get('naive_per_sample_s', '-')}  "
                  f"(same {row.get('shipped_same_samples_per_sample_s', '-')})  setup {row['setup_s']} s  "
                  f"{row['statuses']}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"benchmark": "babelcode harness overhead (compile + run per sample, HumanEval, one sample/problem)",
              "peer": "MultiPL-E-style executor: one compiler start per sample, no precompiled header, no cache",
              # other work on the machine slows compiles: each row records the load it ran under
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "rows": rows}
    out = Path(args.out)
    if out.is_file():  # re-measuring some languages keeps the others' rows
        measured = {r["language"] for r in rows}
        kept = [r for r in json.loads(out.read_text())["rows"] if r["language"] not in measured]
        order = [lang.name for lang in parse_languages("all")]
        result["rows"] = sorted(kept + rows, key=lambda r: order.index(r["language"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
