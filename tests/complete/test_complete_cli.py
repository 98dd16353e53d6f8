"""`codegemma complete FILE:LINE:COL` and `codegemma chat` through the real CLI entry point."""

from __future__ import annotations

import io
import json

import pytest

from codegemma.cli import main
from codegemma.complete.cli import parse_location, split_at
from codegemma.errors import CodegemmaError


def test_parse_location_and_split():
    assert parse_location("src/a.py:3:5")[1:] == (3, 5)
    text = "ab\r\ncd\nef"
    assert split_at(text, 2, 2, "t") == ("ab\r\nc", "d\nef")
    assert split_at("x\n", 2, 1, "t") == ("x\n", "")
    for bad in ("a.py", "a.py:0:1", "a.py:x:1"):
        with pytest.raises(CodegemmaError, match="FILE:LINE:COL|start at 1"):
            parse_location(bad)
    with pytest.raises(CodegemmaError, match="line 9 is past the end"):
        split_at(text, 9, 1, "t")
    with pytest.raises(CodegemmaError, match="column 7 is past the end of line 1"):
        split_at(text, 1, 7, "t")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_fim_model, fim_tokenizer):
    from codegemma.checkpoints import save_hf

    tiny_fim_model.config.max_seq_len = 2048
    out = tmp_path_factory.mktemp("cli") / "tiny"
    save_hf(tiny_fim_model, tiny_fim_model.config, fim_tokenizer, out)
    return out


@pytest.mark.slow
def test_complete_command(tmp_path, model_dir, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "util.py").write_text("def helper(x):\n    return x + 1\n")
    (repo / "notes.md").write_text("# not python\n")
    target = repo / "main.py"
    target.write_text("from util import helper\n\n\ndef run(x):\n    \n")
    code = main(["complete", f"{target}:5:5", "--repo", str(repo), "--model", str(model_dir), "--json",
                 "--max-new-tokens", "4"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "fim" and out["order"] == "spm" and out["context"] == ["util.py"]
    assert out["multiline"] is True and out["generated_tokens"] <= 4 and isinstance(out["text"], str)


def test_complete_errors_are_one_line(tmp_path, model_dir, capsys):
    assert main(["complete", f"{tmp_path / 'missing.py'}:1:1", "--model", str(model_dir)]) == 1
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe")
    assert main(["complete", f"{tmp_path / 'bin.py'}:1:1", "--model", str(model_dir)]) == 1
    assert "not UTF-8" in capsys.readouterr().err
    (tmp_path / "a.py").write_text("x = 1\n")
    # not the default budget (0 used to mean it), nor a message about max_new_tokens once the model
    # has loaded, as a budget too small for the sentinels gave
    for budget in ("0", "-5", "3"):
        with pytest.raises(SystemExit):
            main(["complete", f"{tmp_path / 'a.py'}:1:1", "--model", str(model_dir), "--max-prompt-tokens", budget])
        assert f"argument --max-prompt-tokens: must be at least 9 (BOS, the FIM sentinels and some of the file), " \
               f"got {budget}" in capsys.readouterr().err


@pytest.mark.slow
def test_chat_streams_replies(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nWrite code\n"))
    assert main(["chat", "--model", str(model_dir), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("\n") >= 2


def test_chat_input_that_is_not_utf8_is_one_line(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\udcffhi\n"))  # a byte surrogateescape kept as it was
    assert main(["chat", "--model", str(model_dir), "--max-new-tokens", "1"]) == 1
    assert capsys.readouterr().err == "codegemma chat: error: stdin line 2: not UTF-8 text (byte 0)\n"
