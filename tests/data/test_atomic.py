import resource

import pytest

from codegemma.data.atomic import dir_target, file_target, write_bytes
from codegemma.errors import CodegemmaError


def test_a_failed_write_names_the_file_asked_for_not_the_temporary(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # a full disk
    try:
        with pytest.raises(OSError) as caught:
            write_bytes(tmp_path / "out.bin", b"x" * 4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.filename == str(tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


def test_output_targets_are_checked_before_the_work(tmp_path):
    (tmp_path / "text.txt").write_text("mine")
    # mkdir's own error for a file where a directory should be is "File exists"
    with pytest.raises(NotADirectoryError, match="Not a directory"):
        dir_target(tmp_path / "text.txt")
    with pytest.raises(NotADirectoryError):
        write_bytes(tmp_path / "text.txt" / "a.json", b"{}")
    with pytest.raises(CodegemmaError, match="new/ ends in a slash, so it names a directory: name a .json file"):
        file_target(f"{tmp_path}/new/", ".json file")
    with pytest.raises(CodegemmaError, match="is a directory: name a .json file"):
        file_target(tmp_path, ".json file")
    assert file_target(tmp_path / "sub" / "a.json") == tmp_path / "sub" / "a.json"
