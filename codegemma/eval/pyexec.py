"""Judge a Python program as the reference harnesses do, in the sandbox.

OpenAI's human-eval and human-eval-infilling (`execution.py`) and bigcode-evaluation-harness `exec`
the program in a fresh namespace inside the harness's own interpreter and count it as passed only
when that `exec` returns. So, here too:
  - the program runs as a module named "builtins", not "__main__": its `if __name__ == "__main__":`
    block does not run (`exec(program, {})` resolves `__name__` to the builtins module's);
  - any exception fails it, SystemExit included: a program that calls `sys.exit(0)` before its
    tests ran is not a pass, and one that leaves through `os._exit` never prints the pass marker,
    a random token the judge writes after the program returned;
  - what the program prints is discarded, not judged (the references swallow stdout and stderr),
    so a long print does not reach the sandbox's output limit;
  - the harness's numpy is importable, as it is in the references' environment (human-eval
    requires it); the rest is `python -I -S`: the standard library, without site-packages' .pth
    files or user site.
The program is forked from the sandbox's pristine interpreter (codegemma.eval.zygote).
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
from functools import lru_cache

from codegemma.eval import sandbox
from codegemma.eval.task import Outcome

WALL_FACTOR = 3
# The reference harnesses give a program 3 seconds (human-eval's and human-eval-infilling's
# check_correctness); here they are CPU seconds, so a loaded machine does not fail a program the
# reference would pass.
REFERENCE_TIMEOUT = 3.0

# main.py of every run: loads solution.py, runs it as described above, then prints the marker.
JUDGE = '''\
import io
import sys
import traceback


class Discard(io.TextIOBase):
    def writable(self):
        return True

    def write(self, text):
        return len(text)


def judge():
    out, err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = Discard()
    try:
        with open("solution.py", "rb") as f:
            exec(compile(f.read(), "solution.py", "exec"), {{}})
    except BaseException:
        sys.stdout, sys.stderr = out, err
        traceback.print_exc()
        return 1
    sys.stdout, sys.stderr = out, err
    out.write({marker!r} + "\\n")
    return 0


sys.path += {extra_paths!r}
sys.exit(judge())
'''


def last_error_line(stderr: str) -> str:
    """The final line of a traceback ("AssertionError", "NameError: name 'x' is not defined")."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@lru_cache(maxsize=1)
def numpy_path() -> tuple[str, ...]:
    """The site directory that holds this interpreter's numpy, if it has one (found, not imported)."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return ()
    return (os.path.dirname(os.path.realpath(next(iter(spec.submodule_search_locations)))),)


def run_python(program: str, timeout: float, limits: sandbox.Limits | None = None) -> Outcome:
    """Run `program` in a fresh sandbox, judged as described above, and turn that into an Outcome.

    `timeout` is CPU seconds, so a busy host does not turn slow-but-correct programs into failures;
    the wall-clock limit (for programs that sleep or block) is three times that.
    """
    limits = limits or sandbox.Limits(cpu_seconds=math.ceil(timeout))
    marker = f"passed {secrets.token_hex(16)}"
    judge = JUDGE.format(marker=marker, extra_paths=list(numpy_path()))
    result = sandbox.run_python({"main.py": judge, "solution.py": program}, timeout=WALL_FACTOR * timeout,
                                limits=limits)
    if result.status == "ok" and marker in result.stdout.splitlines():
        return Outcome(True, "passed", "", result.seconds, result.isolation)
    if result.status == "timeout" or result.reason.startswith("CPU time limit"):
        return Outcome(False, "timeout", result.reason, result.seconds, result.isolation)
    if result.status == "ok":
        error = "exited before its tests finished"
    else:
        error = last_error_line(result.stderr) or result.reason or f"exit code {result.returncode}"
    status = "error" if error.startswith(("SyntaxError", "IndentationError", "TabError")) else "failed"
    return Outcome(False, status, error, result.seconds, result.isolation)
