from codegemma.eval.babelcode.execute import classify
from codegemma.eval.sandbox import RunResult


def result(stdout, status="ok", code=0, stderr="", reason=""):
    return RunResult(status, code, stdout, stderr, 0.1, [], reason)


def test_first_case_that_does_not_pass_decides():
    assert classify(result("#BABEL# PASS 0\n#BABEL# PASS 1\n"), 2) == ("passed", "")
    assert classify(result("#BABEL# PASS 0\n#BABEL# FAIL 1\n", "error", 1), 3)[0] == "failed"
    assert classify(result("#BABEL# ERROR 0\n", "error", 1, "Traceback\nValueError: x"), 3) == \
        ("runtime_error", "Traceback | ValueError: x")


def test_missing_reports_and_stops_are_runtime_errors_or_timeouts():
    assert classify(result("#BABEL# PASS 0\n", "killed", -11, reason="signal 11"), 2)[0] == "runtime_error"
    assert classify(result("#BABEL# PASS 0\n"), 2)[0] == "runtime_error"  # exit 0 before every test reported
    assert classify(result("", "timeout", None, reason="no exit within 3 s"), 2) == ("timeout", "no exit within 3 s")
    # A program that prints a look-alike line mid-output does not count: the mark must start a line.
    assert classify(result("x #BABEL# PASS 0\n#BABEL# PASS 0\n"), 2)[0] == "runtime_error"
