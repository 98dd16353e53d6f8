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
    assert not (tmp_path / "corpus").exists()
