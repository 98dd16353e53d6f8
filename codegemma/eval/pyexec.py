"""Judge a Python program by running it in the sandbox: exit 0 passes, anything else fails.

Programs run as `python -I -S main.py` would (no site-packages: the benchmarks need only the
standard library), forked from the sandbox's pristine interpreter.
"""

from __future__ import annotations

import math

from codegemma.eval import sandbox
from codegemma.eval.task import Outcome

WALL_FACTOR = 3


def last_error_line(stderr: str) -> str:
    """The final line of a traceback ("AssertionError", "NameError: name 'x' is not defined")."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_python(program: str, timeout: float, limits: sandbox.Limits | None = None) -> Outcome:
    """Run `program` as main.py in a fresh sandbox and turn the result into an Outcome.

    `timeout` is CPU seconds, so a busy host does not turn slow-but-correct programs into failures;
    the wall-clock limit (for programs that sleep or block) is three times that.
    """
    limits = limits or sandbox.Limits(cpu_seconds=math.ceil(timeout))
    result = sandbox.run_python({"main.py": program}, timeout=WALL_FACTOR * timeout, limits=limits)
    if result.status == "ok":
        return Outcome(True, "passed", "", result.seconds, result.isolation)
    if result.status == "timeout" or result.reason.startswith("CPU time limit"):
        return Outcome(False, "timeout", result.reason, result.seconds, result.isolation)
    error = last_error_line(result.stderr) or result.reason or f"exit code {result.returncode}"
    status = "error" if error.startswith(("SyntaxError", "IndentationError", "TabError")) else "failed"
    return Outcome(False, status, error, result.seconds, result.isolation)
