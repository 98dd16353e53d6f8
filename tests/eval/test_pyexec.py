"""The Python judge passes a program only when it runs to its end, as the reference harnesses'
`exec` does: early exits fail, `__main__` blocks do not run, output is not judged."""

import importlib.util

import pytest

from codegemma.eval.pyexec import run_python
from codegemma.eval.task import get_task


@pytest.mark.parametrize("program, error", [
    ("import sys\nsys.exit(0)\nassert False\n", "SystemExit: 0"),
    ("import sys\nsys.exit()\n", "SystemExit"),
    ("import os\nos._exit(0)\nassert False\n", "exited before its tests finished"),
    ("assert 1 == 2\n", "AssertionError"),
])
def test_a_program_that_leaves_before_its_end_fails(program, error):
    outcome = run_python(program, timeout=5)
    assert not outcome.passed and outcome.status == "failed" and outcome.error == error


def test_a_program_runs_as_the_references_exec_runs_it():
    program = ("def add(a, b):\n    return a + b\n\n"
               "if __name__ == '__main__':\n    input()\n\n"  # not run: the module is not __main__
               "print('x' * 200_000)\n"  # discarded, as the references swallow output
               "assert __name__ == 'builtins' and add(1, 2) == 3\n")
    outcome = run_python(program, timeout=5)
    assert outcome.passed and outcome.status == "passed", outcome.error


def test_a_syntax_error_is_an_error_not_a_failure():
    outcome = run_python("def f(:\n    pass\n", timeout=5)
    assert outcome.status == "error" and outcome.error.startswith("SyntaxError")


@pytest.mark.skipif(importlib.util.find_spec("numpy") is None, reason="numpy is not installed")
def test_numpy_is_importable_as_in_the_references_environment():
    outcome = run_python("import numpy as np\nassert np.mean([1, 3]) == 2\n", timeout=10)
    assert outcome.passed, outcome.error


def test_humaneval_fails_a_completion_that_exits_before_the_tests():
    task = get_task("humaneval")
    problem = task.problems(1)[0]
    assert task.check(problem, task.canonical(problem)).passed
    for completion in ("    import sys\n    sys.exit(0)\n",  # on the tests' first call
                       task.canonical(problem) + "\nimport sys\nsys.exit(0)\n"):  # before the tests
        outcome = task.check(problem, completion)
        assert not outcome.passed and outcome.error == "SystemExit: 0"
