import pytest

from codegemma.data.demo_corpus import build_demo_corpus
from codegemma.data.languages import detect_language
from codegemma.data.licenses import is_license_file
from codegemma.errors import CodegemmaError


def test_corpus_of_small_files_of_one_language(tmp_path):
    out = tmp_path / "corpus"
    counts = build_demo_corpus(out, max_mb=0.3, max_file_kb=2, languages=["Python"])
    files = [f for f in out.rglob("*") if f.is_file()]
    assert counts["repositories"] > 0 and files
    assert all(f.stat().st_size <= 2000 for f in files)
    assert all(detect_language(f.name) == "Python" or is_license_file(f.name) for f in files)


def test_unknown_language_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CodegemmaError, match="unknown language.*pyton"):
        build_demo_corpus(tmp_path / "corpus", max_mb=0.1, languages=["pyton"])
    with pytest.raises(CodegemmaError, match="must be 0 \\(no limit\\) or more, and finite"):
        build_demo_corpus(tmp_path / "corpus", max_mb=float("nan"))
    assert list(tmp_path.iterdir()) == []  # no staging folder either


def test_an_existing_folder_is_replaced_only_if_it_is_a_demo_corpus(tmp_path):
    """`demo-corpus OUT` rebuilds an earlier corpus in place, but never deletes a folder of anything
    else (it used to replace whatever OUT was, a file included)."""
    out = tmp_path / "corpus"
    build_demo_corpus(out, max_mb=0.05)
    first = sorted(p.name for p in out.iterdir())
    assert build_demo_corpus(out, max_mb=0.05)["repositories"] == len(first)  # rebuilt in place
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    with pytest.raises(CodegemmaError, match="is not a demo corpus; it is left as it is"):
        build_demo_corpus(mine, max_mb=0.05)
    with pytest.raises(CodegemmaError, match="is not a directory"):
        build_demo_corpus(tmp_path / "file", max_mb=0.05)
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "file", "mine"]  # no staging left


def test_a_corpus_with_nothing_selected_or_negative_limits_is_refused(tmp_path):
    with pytest.raises(CodegemmaError, match="no source file was selected.*nothing written"):
        build_demo_corpus(tmp_path / "corpus", stdlib=False)
    with pytest.raises(CodegemmaError, match="must be 0 \\(no limit\\) or more"):
        build_demo_corpus(tmp_path / "corpus", max_mb=-1)
    assert list(tmp_path.iterdir()) == []

