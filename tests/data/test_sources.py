import pytest

from codegemma.data.sources import SourceSpec, list_repositories, load_repository
from codegemma.errors import CodegemmaError


def repos(collection, **kw):
    return {ref.name: load_repository(ref) for ref in list_repositories(SourceSpec(name="s", path=str(collection), **kw))}


def test_every_container_kind(collection):
    loaded = repos(collection)
    assert sorted(loaded) == ["demo", "demo-fork", "misc", "tools", "webapp"]
    paths = {name: sorted(d.path for d in r.documents) for name, r in loaded.items()}
    assert "untracked.py" not in paths["demo-fork"]  # git: committed files of HEAD only
    assert paths["tools"] == ["tools/gen_pb2.py", "tools/main.go", "tools/mathx.py", "tools/solver.py"]  # bare clone
    assert paths["webapp"] == ["package.json", "src/api.ts", "src/index.ts"]  # tar root stripped
    assert "logo.png" not in " ".join(paths["misc"])  # binary skipped
    assert loaded["demo"].license == "MIT" and loaded["tools"].license is None
    langs = {d.path: d.language for d in loaded["misc"].documents}
    assert langs["lib/util.c"] == "C" and langs["data.json"] == "JSON"
    doc = next(d for d in loaded["demo"].documents if d.path == "demo/core.py")
    assert doc.repo == "demo" and doc.language == "Python" and doc.size == len(doc.content.encode())


def test_repository_layout_and_limits(collection):
    one = list(list_repositories(SourceSpec(name="s", path=str(collection / "demo"), layout="repository")))
    assert [r.name for r in one] == ["demo"]
    assert len(list(list_repositories(SourceSpec(name="s", path=str(collection), max_repos=2)))) == 2
    small = load_repository(next(list_repositories(SourceSpec(name="s", path=str(collection / "demo"),
                                                              layout="repository", max_file_bytes=100))))
    assert all(d.size <= 100 for d in small.documents)


def test_bad_sources(tmp_path):
    with pytest.raises(CodegemmaError, match="does not exist"):
        list(list_repositories(SourceSpec(name="s", path=str(tmp_path / "nope"))))
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.py").write_text("x = 1\n")  # one repository, given as a collection
    with pytest.raises(CodegemmaError, match="holds no repository folders.*layout = \"repository\""):
        list(list_repositories(SourceSpec(name="s", path=str(tmp_path / "repo"))))
    assert [r.name for r in list_repositories(SourceSpec(name="s", path=str(tmp_path / "repo"), layout="repository"))] \
        == ["repo"]
    with pytest.raises(CodegemmaError, match="exactly one"):
        SourceSpec(name="s")
    with pytest.raises(CodegemmaError, match="kind"):
        SourceSpec(name="s", path="x", kind="binary")


def test_a_truncated_tarball_is_one_error_naming_it(collection, tmp_path):
    whole = (collection / "webapp.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    ref = next(list_repositories(SourceSpec(name="s", path=str(cut), layout="repository")))
    with pytest.raises(CodegemmaError, match="cannot read repository .*cut.tar.gz: Compressed file ended"):
        load_repository(ref)
