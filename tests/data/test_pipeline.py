import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codegemma.data.pipeline import build
from codegemma.data.recipe import load_recipe, recipe_from_dict
from codegemma.data.shards import ShardDataset
from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS, undo_fim
from codegemma.tokenizer import Tokenizer, rename_tokens


def make_recipe(collection, tokenizer_path, out, **overrides):
    data = {"name": "t", "out_dir": str(out), "tokenizer": str(tokenizer_path), "seq_len": 128, "workers": 1,
            "sequences_per_shard": 3, "sources": [{"name": "code", "path": str(collection)}]}
    data.update(overrides)
    return recipe_from_dict(data)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def split_pieces(text: str) -> list[list[str]]:
    """Decoded sample text -> per-file piece lists, cut at the sentinels."""
    s = CODEGEMMA_SENTINELS
    files, pieces, buf = [], [], ""
    i = 0
    while i < len(text):
        hit = next((t for t in s.all() if text.startswith(t, i)), None)
        if hit is None:
            buf += text[i]
            i += 1
            continue
        if buf:
            pieces.append(buf)
            buf = ""
        if hit == s.file_separator:
            files.append(pieces)
            pieces = []
        else:
            pieces.append(hit)
        i += len(hit)
    if buf:
        pieces.append(buf)
    files.append(pieces)
    return files


@pytest.mark.slow
def test_build_end_to_end(collection, tokenizer_path, tmp_path):
    # sequences long enough that no sample is chunked, so every segment decodes to whole files
    report = build(make_recipe(collection, tokenizer_path, tmp_path / "out", seq_len=1024), progress=False)
    stages = report["stages"]
    assert stages["repositories"] == 5
    assert stages["dropped_by_filter"]["auto_generated"] == 1  # gen_pb2.py
    assert stages["dropped_by_filter"]["max_line_length"] == 1  # app.min.js
    assert stages["dropped_by_filter"]["data_file_size"] == 1  # data.json over 5000 chars
    assert stages["dropped_by_filter"]["decontaminated"] == 1
    assert report["decontaminated"][0]["path"] == "tools/solver.py"
    assert report["decontaminated"][0]["task_id"] == "HumanEval/0"
    assert stages["dedup"]["repository_exact"] == 1  # demo-fork is demo
    assert stages["dedup"]["file_near"] == 1  # tools/mathx.py is core.py with a twist
    assert stages["pii_redactions"]["email"] >= 1 and stages["pii_redactions"]["secret"] >= 1
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "plots" / "stages.png").is_file()

    ds = ShardDataset(tmp_path / "out" / "train")
    assert ds.meta["fim_rate"] == 0.8 and ds.seq_len == 1024
    assert ds.meta["fim_chunk_chars"] == 0 and ds.meta["fim_suffix_line_rate"] == 0.0
    manifest = json.loads((tmp_path / "out" / "train.files.json").read_text())
    paths = [tuple(m) for m in manifest]
    assert len(paths) == len(set(paths)) == stages["files_out"]
    assert ("code", "demo-fork", "demo/core.py") not in paths and ("code", "demo", "demo/core.py") in paths
    assert ("code", "webapp", "src/api.ts") in paths  # tarball's top directory stripped

    tok = Tokenizer.from_file(tokenizer_path)
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        for seg in range(1, item["segment_ids"].max() + 1):
            ids = item["tokens"][item["segment_ids"] == seg].tolist()
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
            for pieces in split_pieces(tok.decode(ids[1:-1])):
                path, text = undo_fim(pieces)
                if path is None:
                    path, text = text.split("\n", 1)
                seen[path] = text
    assert seen["demo/core.py"].startswith('"""Core helpers')
    assert "<EMAIL>" in seen["demo/models.py"] and "jane.doe" not in seen["demo/models.py"]
    assert "AKIA" not in seen["demo/api.py"]
    assert "203.0.113.9" in seen["demo/models.py"]  # documentation addresses are not personal data
    # dependency order: core before models before api, the unit test right after what it tests
    demo_order = [p for _, repo, p in manifest if repo == "demo"]
    assert demo_order.index("demo/core.py") < demo_order.index("demo/models.py") < demo_order.index("demo/api.py")
    assert [p for _, repo, p in manifest if repo == "webapp"][:2] == ["src/api.ts", "src/index.ts"]


@pytest.mark.slow
def test_same_result_with_more_workers_and_fim_rate(collection, tokenizer_path, tmp_path):
    build(make_recipe(collection, tokenizer_path, tmp_path / "a"), progress=False)
    build(make_recipe(collection, tokenizer_path, tmp_path / "b", workers=2), progress=False)
    assert shard_bytes(tmp_path / "a" / "train") == shard_bytes(tmp_path / "b" / "train")
    report = build(make_recipe(collection, tokenizer_path, tmp_path / "c", fim={"rate": 0.0}), progress=False)
    assert report["stages"]["fim_files"] == {"psm": 0, "spm": 0}
    report = build(make_recipe(collection, tokenizer_path, tmp_path / "d", fim={"rate": 1.0}), progress=False)
    assert sum(report["stages"]["fim_files"].values()) == report["stages"]["files_out"]


def test_unused_tokens_become_the_sentinels_for_continued_pretraining(collection, tokenizer_path, tmp_path):
    """A Gemma vocabulary has no FIM sentinels: `fim_sentinels_from` spells four unused tokens as
    them, which gives the shards a vocabulary with the sentinels at those ids would give."""
    sentinels = CODEGEMMA_SENTINELS.all()
    spare = [f"<spare{i}>" for i in range(4)]
    plain = tmp_path / "plain" / "tokenizer.json"  # the test vocabulary with its sentinels renamed away
    plain.parent.mkdir()
    rename_tokens(Tokenizer.from_file(tokenizer_path), dict(zip(sentinels, spare))).backend.save(str(plain))
    fim = {"rate": 1.0}
    build(make_recipe(collection, tokenizer_path, tmp_path / "with", fim=fim), progress=False)
    build(make_recipe(collection, plain, tmp_path / "from", fim=fim, fim_sentinels_from=spare), progress=False)
    same, renamed = shard_bytes(tmp_path / "with" / "train"), shard_bytes(tmp_path / "from" / "train")
    assert same.pop("index.json") != renamed.pop("index.json")  # the meta says which tokenizer
    assert same == renamed
    meta = ShardDataset(tmp_path / "from" / "train").meta
    assert meta["fim_sentinels_from"] == spare
    with pytest.raises(CodegemmaError, match=r"has no <\|fim_prefix\|>.*fim_sentinels_from"):
        build(make_recipe(collection, plain, tmp_path / "none", fim=fim), progress=False)
    with pytest.raises(CodegemmaError, match="needs 4 tokens"):
        build(make_recipe(collection, plain, tmp_path / "three", fim=fim, fim_sentinels_from=spare[:3]), progress=False)


def test_a_recipe_corrected_after_a_failed_listing_needs_no_fresh(collection, tokenizer_path, tmp_path):
    """A build that stopped at its sources (a wrong path) did no work, so the corrected recipe runs
    in the same out_dir without --fresh."""
    with pytest.raises(CodegemmaError, match="does not exist"):
        build(make_recipe(collection / "nope", tokenizer_path, tmp_path / "out"), progress=False)
    # nor one whose every repository would be held out (one repository and an eval_fraction, say)
    with pytest.raises(CodegemmaError, match="holds out all 5 of the recipe's repositories"):
        build(make_recipe(collection, tokenizer_path, tmp_path / "out", eval_fraction=0.999), progress=False)
    build(make_recipe(collection, tokenizer_path, tmp_path / "out"), progress=False)
    assert len(ShardDataset(tmp_path / "out" / "train")) > 0


@pytest.mark.slow
def test_changed_recipe_needs_fresh(collection, tokenizer_path, tmp_path):
    build(make_recipe(collection, tokenizer_path, tmp_path / "out"), progress=False)
    changed = make_recipe(collection, tokenizer_path, tmp_path / "out", seed=5)
    with pytest.raises(CodegemmaError, match="--fresh"):
        build(changed, progress=False)
    build(changed, fresh=True, progress=False)


def test_eval_split_and_text_source_mixture(collection, tokenizer_path, tmp_path):
    docs = tmp_path / "docs"
    for i in range(12):
        (docs / f"d{i}").mkdir(parents=True)
        (docs / f"d{i}" / "notes.md").write_text(f"# Note {i}\n\n" + "This is plain prose about topic %d. " % i * 5)
    recipe = make_recipe(collection, tokenizer_path, tmp_path / "out", eval_fraction=0.3, sources=[
        {"name": "code", "path": str(collection), "weight": 0.8},
        {"name": "prose", "path": str(docs), "kind": "text", "weight": 0.2}])
    report = build(recipe, progress=False)
    shares = report["splits"]["train"]["shares"]
    assert set(shares) == {"code", "prose"} and shares["code"] > shares["prose"]
    assert "eval" in report["splits"]
    held = [p for p in (tmp_path / "out" / "heldout").rglob("*") if p.is_file() and p.name != "repositories.json"]
    assert held or report["splits"]["eval"]["shares"] == {"prose": 1.0}
    repos = json.loads((tmp_path / "out" / "heldout" / "repositories.json").read_text())
    assert {p.relative_to(tmp_path / "out" / "heldout").parts[0] for p in held} <= set(repos)


@pytest.mark.slow
def test_hf_streaming_source(tokenizer_path, tmp_path):
    rows = [{"repo": "r1", "path": "a.py", "content": "def f():\n    return 1\n", "stars": 3},
            {"repo": "r1", "path": "b.py", "content": "from a import f\n\nprint(f())\n", "stars": 3},
            {"repo": "r2", "path": "main.go", "content": "package main\n\nfunc main() {}\n", "stars": 0}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_from_dict({"name": "hf", "out_dir": str(tmp_path / "out"), "tokenizer": str(tokenizer_path),
                               "seq_len": 64, "workers": 1, "sources": [{"name": "hub", "hf": "json",
                                                                          "data_files": str(data)}]})
    report = build(recipe, progress=False)
    assert report["stages"]["repositories"] == 2 and report["stages"]["files_out"] == 3
    manifest = json.loads((tmp_path / "out" / "train.files.json").read_text())
    assert [p for _, repo, p in manifest if repo == "r1"] == ["a.py", "b.py"]


def test_recipe_errors(tmp_path):
    with pytest.raises(CodegemmaError, match="no \\[\\[sources\\]\\]"):
        recipe_from_dict({"name": "x", "out_dir": "o", "tokenizer": "t"})
    with pytest.raises(CodegemmaError, match="unknown key"):
        recipe_from_dict({"name": "x", "out_dir": "o", "tokenizer": "t", "sources": [{"name": "a", "path": "p", "bogus": 1}]})
    with pytest.raises(CodegemmaError, match="packing.order"):
        recipe_from_dict({"name": "x", "out_dir": "o", "tokenizer": "t", "packing": {"order": "nope"},
                          "sources": [{"name": "a", "path": "p"}]})
    for key, value, message in (("sequences_per_shard", 0, "at least 1"), ("workers", -1, "0 \\(every core\\) or more")):
        with pytest.raises(CodegemmaError, match=f"{key} must be {message}"):
            recipe_from_dict({"name": "x", "out_dir": "o", "tokenizer": "t", key: value,
                              "sources": [{"name": "a", "path": "p"}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(CodegemmaError, match="invalid TOML"):
        load_recipe(bad)


@pytest.mark.parametrize("overrides, message", [
    ({"seq_len": "64"}, "seq_len must be an integer, got '64'"),
    ({"seq_len": 64.5}, "seq_len must be an integer, got 64.5"),
    ({"workers": "two"}, "workers must be an integer"),
    ({"fim": 1}, r"\[fim\] must be a table"),
    ({"dedup": {"threshold": 2}}, r"dedup.threshold must be in \[0, 1\]"),
    ({"decontamination": {"enabled": "no"}}, "enabled must be true or false, got 'no'"),
    ({"eval_fraction": float("nan")}, "eval_fraction must be a finite number"),
    ({"sources": [{"name": "a", "path": 3}]}, "path must be a string"),
])
def test_recipe_values_of_the_wrong_type_or_range_are_refused(overrides, message):
    with pytest.raises(CodegemmaError, match=message):
        recipe_from_dict({"name": "x", "out_dir": "o", "tokenizer": "t", "sources": [{"name": "a", "path": "p"}],
                          **overrides})


def test_missing_inputs_are_refused_before_any_stage(collection, tokenizer_path, tmp_path):
    """A wrong tokenizer path was found by the samples stage, after clean and dedup had written work
    that the corrected recipe could not resume without --fresh."""
    recipe = make_recipe(collection, tmp_path / "nosuch.json", tmp_path / "out",
                         decontamination={"mbpp": str(tmp_path / "mbpp.jsonl")})
    with pytest.raises(CodegemmaError, match="tokenizer .*nosuch.json does not exist; decontamination.mbpp "):
        build(recipe, progress=False)
    assert not (tmp_path / "out").exists()


def test_build_command_refuses_bad_overrides_and_recipe_bytes(collection, tokenizer_path, tmp_path, capsys):
    from codegemma.cli import main

    recipe = _write_recipe(tmp_path / "r.toml", collection, tokenizer_path, tmp_path / "out")
    with pytest.raises(SystemExit):
        main(["data", "build", str(recipe), "--workers", "-1"])
    assert "argument --workers: must be 0 or more, got -1" in capsys.readouterr().err
    recipe.write_bytes(b'name = "\xff"\n')
    assert main(["data", "build", str(recipe)]) == 1
    assert capsys.readouterr().err == f"codegemma data: error: {recipe}: not UTF-8 text (byte 8)\n"


def _write_recipe(path: Path, collection: Path, tokenizer_path: Path, out: Path) -> Path:
    path.write_text(f'''name = "resume"
out_dir = "{out}"
tokenizer = "{tokenizer_path}"
seq_len = 128
workers = 1
[[sources]]
name = "code"
path = "{collection}"
''')
    return path


def test_a_build_never_replaces_folders_it_did_not_write(collection, tokenizer_path, tmp_path):
    """out_dir/train, eval and heldout are replaced only when an earlier build wrote them: a folder of
    anything else there stops the build before any work."""
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "notes.md").write_text("mine")
    with pytest.raises(CodegemmaError, match="train exists and is not a shard directory"):
        build(make_recipe(collection, tokenizer_path, tmp_path / "out"), progress=False)
    assert (tmp_path / "out" / "train" / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train"]


def test_build_command_says_when_no_repository_was_held_out(collection, tokenizer_path, tmp_path, capsys):
    from codegemma.cli import main

    recipe = _write_recipe(tmp_path / "r.toml", collection, tokenizer_path, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace("workers = 1\n", "workers = 1\neval_fraction = 0.001\n"))
    assert main(["data", "build", str(recipe), "--quiet"]) == 0
    assert "no eval split: eval_fraction 0.001 held out none of the 5 repositories" in capsys.readouterr().out
    assert not (tmp_path / "out" / "eval").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_shards(collection, tokenizer_path, tmp_path):
    # many repositories so the kill lands in the middle of the per-repository stages
    import shutil

    for i in range(40):
        shutil.copytree(collection / "demo", collection / f"copy{i:02d}")
        (collection / f"copy{i:02d}" / "demo" / "extra.py").write_text(f"VALUE_{i} = {i} * {i * 7} + {i * 13}\n" * (i + 3))
    reference = _write_recipe(tmp_path / "ref.toml", collection, tokenizer_path, tmp_path / "ref")
    assert subprocess.run([sys.executable, "-m", "codegemma", "data", "build", str(reference), "--quiet"],
                          capture_output=True).returncode == 0

    recipe = _write_recipe(tmp_path / "run.toml", collection, tokenizer_path, tmp_path / "run")
    work = tmp_path / "run" / "work"
    proc = subprocess.Popen([sys.executable, "-m", "codegemma", "data", "build", str(recipe), "--quiet"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((work / "clean").glob("*.json.gz"))) < 10 if (work / "clean").exists() \
            else time.time() < deadline:
        time.sleep(0.05)
        if proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name.split(".")[0] for p in (work / "clean").glob("*.json.gz")}
    assert 0 < len(done_before) < 45, "the kill should land midway"
    assert not (tmp_path / "run" / "train").exists()
    first_runs = {json.loads(line)["run"] for line in (work / "journal.jsonl").read_text().splitlines()}

    result = subprocess.run([sys.executable, "-m", "codegemma", "data", "build", str(recipe), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert shard_bytes(tmp_path / "run" / "train") == shard_bytes(tmp_path / "ref" / "train")
    assert (tmp_path / "run" / "train.files.json").read_text() == (tmp_path / "ref" / "train.files.json").read_text()
    entries = [json.loads(line) for line in (work / "journal.jsonl").read_text().splitlines()]
    cleaned = [e["key"] for e in entries if e["stage"] == "clean"]
    assert len(cleaned) == len(set(cleaned))  # no repository cleaned twice
    # every repository cleaned over both runs; a kill between a repository's output and its journal
    # line loses only the line (the output is there, and the resumed run does not redo it)
    assert len(set(cleaned) | done_before) == 45
    resumed = {e["key"] for e in entries if e["stage"] == "clean" and e["run"] not in first_runs}
    assert not resumed & done_before


def test_shipped_recipes_parse():
    root = Path(__file__).resolve().parents[2] / "recipes" / "data"
    recipes = {p.stem: load_recipe(p) for p in sorted(root.glob("*.toml"))}
    assert {"demo", "codegemma-2b", "codegemma-7b"} <= set(recipes)
    assert recipes["codegemma-2b"].fim.rate == 0.9 and recipes["codegemma-7b"].fim.rate == 0.8
    assert {s.name: s.weight for s in recipes["codegemma-7b"].sources} == {"code": 0.8, "web-text": 0.2}


@pytest.mark.slow
def test_ray_executor_matches_local(collection, tokenizer_path, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    build(make_recipe(collection, tokenizer_path, tmp_path / "local"), progress=False)
    build(make_recipe(collection, tokenizer_path, tmp_path / "ray", executor="ray", workers=2), progress=False)
    assert shard_bytes(tmp_path / "ray" / "train") == shard_bytes(tmp_path / "local" / "train")
