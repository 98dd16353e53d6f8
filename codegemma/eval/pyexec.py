"""Judge a Python program by running it in the sandbox: exit 0 passes, anything else fails."""

from __future__ import annotations

import sys

from codegemma.eval import sandbox
from codegemma.eval.task import Outcome

# -I: ignore PYTHON* variables and the user site; -S: skip site (saves ~30 ms a run; the benchmark
# programs need only the standard library); -B: write no .pyc files.
PYTHON_FLAGS = ("-I", "-S", "-B")


def last_error_line(stderr: str) -> str:
    """The final line of a traceback ("AssertionError", "NameError: name 'x' is not defined")."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_python(program: str, timeout: float, limits: sandbox.Limits = sandbox.Limits()) -> Outcome:
    """Run `program` as main.py in a fresh sandbox and turn the result into an Outcome."""
    result = sandbox.run([sys.executable, *PYTHON_FLAGS, "main.py"], files={"main.py": program},
                         timeout=timeout, limits=limits)
    if result.status == "ok":
        return Outcome(True, "passed", "", result.seconds, result.isolation)
    if result.status == "timeout":
        return Outcome(False, "timeout", result.reason, result.seconds, result.isolation)
    error = last_error_line(result.stderr) or result.reason or f"exit code {result.returncode}"
    status = "error" if error.startswith(("SyntaxError", "IndentationError", "TabError")) else "failed"
    return Outcome(False, status, error, result.seconds, result.isolation)
