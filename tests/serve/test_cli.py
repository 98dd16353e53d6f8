"""`codegemma serve`'s flags are checked before the model loads."""

import pytest

from codegemma.cli import main


@pytest.mark.parametrize("flags, code, message", [
    (["--port", "99999"], 1, "--port must be in 0..65535, got 99999"),
    (["--request-timeout", "0"], 1, "--request-timeout must be a positive number of seconds"),
    (["--request-timeout", "nan"], 1, "--request-timeout must be a positive number of seconds, got nan"),
    (["--max-batch", "0"], 2, "argument --max-batch: must be at least 1, got 0"),
    (["--max-queue", "-1"], 2, "argument --max-queue: must be at least 1"),
])
def test_bad_flags_are_one_line_before_the_model_loads(capsys, monkeypatch, flags, code, message):
    import codegemma.complete.cli

    def no_load(args):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(codegemma.complete.cli, "build_completer", no_load)
    try:
        got = main(["serve", *flags])
    except SystemExit as stop:  # argparse's refusal of a flag
        got = stop.code
    assert got == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
