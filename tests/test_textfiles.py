import gzip

import pytest

from codegemma.errors import CodegemmaError
from codegemma.textfiles import checked_text, json_lines, read_json, read_text


def test_bytes_that_are_not_utf8_are_named_with_file_line_and_offset(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(CodegemmaError, match=r"data.jsonl:2: not UTF-8 text \(byte 16\)"):
        list(json_lines(path))
    with pytest.raises(CodegemmaError, match=r"data.jsonl: not UTF-8 text \(byte 16\)"):
        read_text(path)


def test_a_truncated_gzip_file_is_one_error_naming_it(tmp_path):
    whole = gzip.compress(b'{"a": 1}\n' * 200)
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(CodegemmaError, match="data.jsonl.gz: truncated or corrupt gzip file"):
        list(json_lines(path))


def test_json_that_is_malformed_or_of_another_type(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("{bad")
    with pytest.raises(CodegemmaError, match="summary.json: not valid JSON .* line 1 column 2"):
        read_json(path)
    path.write_text("[]")
    with pytest.raises(CodegemmaError, match="summary.json: expected a JSON object, got list"):
        read_json(path, dict)
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"a": 1}\n\n[1]\n')
    with pytest.raises(CodegemmaError, match="x.jsonl:3: expected a JSON object, got list"):
        list(json_lines(lines))


def test_command_line_text_with_undecodable_bytes():
    """argv and stdin carry bytes that are not UTF-8 as lone surrogates (surrogateescape), which the
    tokenizer cannot encode."""
    assert checked_text("héllo", "x") == "héllo"
    with pytest.raises(CodegemmaError, match=r"the prompt: not UTF-8 text \(byte 4\)"):
        checked_text("h\u00e9l\udcff", "the prompt")
