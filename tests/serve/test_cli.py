"""`codegemma serve`'s flags are checked before the model loads."""

import pytest

from codegemma.cli import main


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "--port must be in 0..65535, got 99999"),
    (["--max-batch", "0"], "--max-batch must be positive"),
    (["--max-queue", "-1"], "--max-queue must be positive"),
    (["--request-timeout", "0"], "--request-timeout must be positive"),
])
def test_bad_flags_are_one_line_before_the_model_loads(capsys, monkeypatch, flags, message):
    import codegemma.complete.cli

    def no_load(args):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(codegemma.complete.cli, "build_completer", no_load)
    assert main(["serve", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
