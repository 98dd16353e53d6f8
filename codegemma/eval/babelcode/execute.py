"""Running compiled programs in the sandbox and classifying each sample.

Statuses: passed, failed (a test's result differed), compile_error, runtime_error (an exception,
a crash, or an exit before every test reported), timeout. Run time limits are separate from (and
smaller than) compile limits.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from codegemma.eval import sandbox
from codegemma.eval.babelcode.build import KOTLIN_STDLIB, Build, Builder
from codegemma.eval.babelcode.languages.base import RESULT_MARK, Language

STATUSES = ("passed", "failed", "compile_error", "runtime_error", "timeout")
RUN_TIMEOUT = 10.0
_RESULT = re.compile(rf"^{re.escape(RESULT_MARK)} (PASS|FAIL|ERROR) (\d+)\s*$", re.M)


@dataclass
class Verdict:
    status: str
    detail: str = ""  # the compiler's or program's complaint, shortened
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    cached: bool = False
    isolation: list[str] = field(default_factory=list)  # the sandbox layers the run had

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def classify(result: sandbox.RunResult, n_tests: int) -> tuple[str, str]:
    """The status of one run from its result lines: the first case that did not pass decides."""
    if result.status == "timeout":
        return "timeout", result.reason
    passed = 0
    for kind, _ in _RESULT.findall(result.stdout):
        if kind == "FAIL":
            return "failed", f"test {passed} failed"
        if kind == "ERROR":
            return "runtime_error", _tail(result.stderr) or f"test {passed} raised"
        passed += 1
    if passed == n_tests and result.status == "ok":
        return "passed", ""
    why = result.reason or (f"exit code {result.returncode}" if result.returncode else "exited early")
    return "runtime_error", f"{why} after {passed}/{n_tests} tests: {_tail(result.stderr)}".rstrip(": ")


def _tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:]


def run_limits(language: Language) -> sandbox.Limits:
    # The JVM, Mono and V8 reserve gigabytes of address space they never touch; their heaps are
    # capped by their own flags instead.
    return sandbox.Limits(address_space_mb=None if language.run_needs_large_memory else 2048, processes=128)


def run_build(language: Language, build: Build, n_tests: int, timeout: float = RUN_TIMEOUT) -> Verdict:
    if not build.ok:
        return Verdict("compile_error", build.log, build.seconds, 0.0, build.cached)
    cmd = language.run_cmd.format(main_class=build.main_class, kotlin_stdlib=KOTLIN_STDLIB)
    if language.compile_cmd is not None:
        cmd = "chmod -R u+x out && " + cmd  # sandbox files arrive without the execute bit
    start = time.perf_counter()
    result = sandbox.run(["sh", "-c", cmd], files=build.files, timeout=timeout, limits=run_limits(language))
    status, detail = classify(result, n_tests)
    return Verdict(status, detail, build.seconds, time.perf_counter() - start, build.cached, result.isolation)


def evaluate_programs(builder: Builder, programs: list[str], n_tests: list[int], timeout: float = RUN_TIMEOUT,
                      jobs: int | None = None) -> list[Verdict]:
    """Compile (cached, parallel, batched) then run every program; verdicts in input order."""
    builds = builder.build_many(programs)
    with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda bn: run_build(builder.language, bn[0], bn[1], timeout), zip(builds, n_tests)))
