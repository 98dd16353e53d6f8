"""`codegemma train ...` through the real entry point."""

import json
import sysconfig
from pathlib import Path

import pytest

from codegemma.cli import main

from .conftest import recipe_toml


def test_tokenizer_command(tmp_path, capsys):
    corpus = Path(sysconfig.get_paths()["stdlib"]) / "json"
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train", "tokenizer", str(corpus), "--ext", ".py", "--vocab-size", "700", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model"]["type"] == "BPE"
    assert (out.parent / "tokenizer_config.json").is_file()


def test_tokenizer_command_says_when_the_corpus_gave_fewer_tokens_than_asked(tmp_path, capsys):
    corpus = tmp_path / "a.py"
    corpus.write_text("def f(x):\n    return x + 1\n" * 20)
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train", "tokenizer", str(corpus), "--vocab-size", "1000", "--out", str(out)]) == 0
    got = len(json.loads(out.read_text())["model"]["vocab"])
    assert got < 1000
    assert capsys.readouterr().err == (f"codegemma train tokenizer: warning: the corpus gave {got} of the 1000 "
                                       "tokens asked for (no more pairs occur twice); a larger corpus gives more\n")


def test_eval_every_is_refused_for_the_packing_experiment(tmp_path, capsys):
    assert main(["train", "experiment", "packing", "--root", str(tmp_path), "--eval-every", "10"]) == 1
    assert "--eval-every is for the fim-rate experiment" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["experiment", "packing", "--fim-chunk-chars", "-1"], "argument --fim-chunk-chars: must be 0 or more, got -1"),
    (["experiment", "fim-rate", "--eval-every", "-5"], "argument --eval-every: must be 0 or more, got -5"),
    (["demo-data", "--fim-chunk-chars", "-1"], "argument --fim-chunk-chars: must be 0 or more, got -1"),
])
def test_negative_sizes_are_refused_by_the_parser(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["train", *flags, "--root", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_outputs_and_inputs_are_checked_before_the_work(tmp_path, capsys):
    """A wrong --answers was found once the whole evaluation was done, and a wrong --tokenizer of
    demo-data once the demo corpus was collected."""
    (tmp_path / "answers").mkdir()
    assert main(["train", "infill-eval", str(tmp_path / "nosuch-run"), "--files", str(tmp_path),
                 "--answers", str(tmp_path / "answers")]) == 1
    assert "answers is a directory: name a .jsonl file to write" in capsys.readouterr().err
    assert main(["train", "demo-data", "--root", str(tmp_path / "demo"),
                 "--tokenizer", str(tmp_path / "nosuch.json")]) == 1
    assert "tokenizer file not found" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_tokenizer_command_refuses_a_corpus_with_nothing_to_learn(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").write_text("text, but not of the kind asked for\n")
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train", "tokenizer", str(tmp_path / "corpus"), "--ext", ".py", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"codegemma train: error: {tmp_path / 'corpus'}: no .py text files to learn "
                                       "a vocabulary from\n")
    assert not out.parent.exists()


def test_run_plot_and_export(tmp_path, shards, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "run", shards, steps=3))
    assert main(["train", "run", str(recipe)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and Path(summary["final"], "model.safetensors").is_file()
    assert main(["train", "plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    # several runs overlaid need a named output
    assert main(["train", "plot", f"a={tmp_path / 'run'}", f"b={tmp_path / 'run'}"]) == 1
    assert main(["train", "plot", f"a={tmp_path / 'run'}", f"b={tmp_path / 'run'}", "--out",
                 str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").stat().st_size > 1000
    # a finished run is not trained again
    assert main(["train", "run", str(recipe)]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    # nor started over on top of itself: its checkpoints would be pruned in favour of the old ones
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    assert main(["train", "run", str(recipe), "--no-resume", "--set", "train.steps=2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run (checkpoints up to step 3); --no-resume" in err
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before
    assert main(["train", "run", str(recipe), "--no-resume", "--set", f"out_dir={tmp_path / 'again'}"]) == 0


def test_infill_eval_command(tmp_path, shards, small_tokenizer_path, capsys):
    from codegemma.train import recipe as recipe_mod
    from codegemma.train.run import run

    recipe = recipe_mod.from_dict({
        "out_dir": str(tmp_path / "run"), "tokenizer": str(small_tokenizer_path), "model": {"preset": "tiny-gemma"},
        "data": {"train": str(shards), "seq_len": 32}, "train": {"steps": 2, "batch_size": 2},
        "log": {"every": 1, "tensorboard": False, "plots": False, "progress": False}})
    run(recipe)
    files = tmp_path / "heldout"
    files.mkdir()
    (files / "a.py").write_text("def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n")
    capsys.readouterr()
    answers = tmp_path / "answers.jsonl"
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--examples", "4",
                 "--max-new-tokens", "3", "--answers", str(answers)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 4 and report["infill_exact_match"] in (0, 0.25, 0.5, 0.75, 1)
    assert 0 <= report["infill_edit_similarity_spm"] <= 1
    assert answers.stat().st_mode & 0o777 == 0o644  # not a temporary file's owner-only mode
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["order"] for r in records] == ["psm"] * 4 + ["spm"] * 4
    source = (files / "a.py").read_text().splitlines()
    for r in records:
        assert r["path"] == "a.py" and source[r["line"] - 1] == r["expected"]
    assert sum(r["exact"] for r in records[:4]) == 4 * report["infill_exact_match"]
    for key in ("fim_middle_loss", "fim_suffix_gain", "fim_middle_loss_spm", "fim_suffix_gain_spm", "copy_gain"):
        assert abs(report[key]) < 20

    # one-line errors: no files, an unknown order, a tokenizer with ids the model does not have, a
    # prompt longer than the model's context
    bigger = tmp_path / "tok" / "tokenizer.json"
    assert main(["train", "tokenizer", str(Path(sysconfig.get_paths()["stdlib"]) / "json"), "--vocab-size", "900",
                 "--out", str(bigger)]) == 0
    capsys.readouterr()
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(tmp_path / "nothing")]) == 1
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--orders", "mps"]) == 1
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--tokenizer", str(bigger)]) == 1
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--max-prompt-tokens",
                 "1000000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "--files" in err[0] and "--orders" in err[1] and "vocabulary" in err[2]
    assert "--max-prompt-tokens" in err[3] and "context" in err[3]

    # left to right: the prefix alone, which also scores a model whose vocabulary has no FIM sentinels
    plain = tmp_path / "plain" / "tokenizer.json"
    plain.parent.mkdir()
    plain.write_text(small_tokenizer_path.read_text().replace("<|fim_", "<|xim_"))
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--examples", "4",
                 "--max-new-tokens", "3", "--orders", "l2r", "--tokenizer", str(plain)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"source", "examples", "fim_middle_loss_l2r", "fim_first_token_loss_l2r",
                           "infill_exact_match_l2r", "infill_edit_similarity_l2r",
                           "infill_suffix_identifier_recall_l2r", "copy_gain"}
    assert main(["train", "infill-eval", str(tmp_path / "run"), "--files", str(files), "--orders", "l2r,psm",
                 "--tokenizer", str(plain)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--orders l2r,psm" in err[0] and "no FIM sentinel" in err[0] and "l2r" in err[0]


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 'many'\n[data]\ntrain = 'nowhere'\n")
    assert main(["train", "run", str(bad)]) == 1
    assert main(["train", "run", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("codegemma train: error:") for line in err)
    assert "missing.toml" in err[1]


def test_an_out_dir_that_cannot_be_written_stops_the_run_first(tmp_path, shards, capsys):
    (tmp_path / "file").write_text("a file, not a directory")
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "file" / "run", shards, steps=3))
    assert main(["train", "run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err == f"codegemma train: error: out_dir {tmp_path / 'file' / 'run'}: cannot write there (Not a directory)\n"


def test_run_names_every_missing_input_before_it_starts(tmp_path, shards, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "run", shards, steps=3))
    missing = {"model.init": tmp_path / "no-start", "tokenizer": tmp_path / "no-tokenizer.json",
               "data.eval": tmp_path / "no-eval"}
    overrides = [arg for key, path in missing.items() for arg in ("--set", f"{key}={path.as_posix()}")]
    assert main(["train", "run", str(recipe), *overrides]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codegemma train: error:")
    assert all(f"{key} {path.as_posix()}" in err[0] for key, path in missing.items())
    assert "data.train" not in err[0]  # what exists is not listed
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_dpo_pairs_command(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": "t/0", "prompt": "p0", "completion": "ok", "passed": True},
            {"task_id": "t/0", "prompt": "p0", "completion": "bad", "passed": False},
            {"task_id": "t/1", "prompt": "p1", "completion": "ok", "passed": True}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    assert main(["train", "dpo-pairs", str(samples), "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"task_id": "t/0", "prompt": "p0", "chosen": "ok", "rejected": "bad"}]
    # no problem with both verdicts: a DPO run could not start from the file, so none is written
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows if r["passed"]))
    out.unlink()
    assert main(["train", "dpo-pairs", str(samples), "--out", str(out)]) == 1
    assert "none of its 2 problems has both a passing and a failing sample" in capsys.readouterr().err
    assert not out.exists()
    # an eval run directory stands for its samples.jsonl
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", "dpo-pairs", str(tmp_path), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    # --out naming a directory: one line, and no temporary file left beside it
    capsys.readouterr()
    assert main(["train", "dpo-pairs", str(samples), "--out", str(tmp_path)]) == 1
    assert "is a directory: name a .jsonl file" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


def test_dpo_pairs_bad_sample_names_file_and_line(tmp_path, capsys):
    """A sample without a required key or a verdict is named as FILE:LINE, the line an editor shows
    (blank lines counted), also when the samples come from an eval run directory."""
    samples = tmp_path / "samples.jsonl"
    good = json.dumps({"task_id": "t/0", "prompt": "p", "completion": "ok", "passed": True})
    samples.write_text(good + "\n\n" + json.dumps({"task_id": "t/0", "completion": "x", "passed": False}) + "\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["train", "dpo-pairs", str(tmp_path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{samples}:3:" in err and "'prompt'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    samples.write_text(good + "\n" + json.dumps({"task_id": "t/0", "prompt": "p", "completion": "x"}) + "\n")
    assert main(["train", "dpo-pairs", str(samples), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{samples}:2:" in err and "no verdict" in err
    assert not out.exists()


def test_a_second_run_in_the_same_out_dir_is_refused(tmp_path, shards, capsys):
    """While a run's process holds its out_dir (here: this test holds the lock), another run there
    stops before it writes anything; once the first is gone, the directory is free."""
    import fcntl

    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "run", shards, steps=2))
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        assert main(["train", "run", str(recipe)]) == 1
        assert capsys.readouterr().err == (f"codegemma train: error: {tmp_path / 'run'}: another run is writing there "
                                           "(process 4242); wait for it to end, or choose another out_dir\n")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    assert main(["train", "run", str(recipe)]) == 0



def test_oss_instruct_checks_its_counts_before_asking(tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    for flag in ("--n", "--workers", "--max-tokens"):
        argv = ["train", "oss-instruct", str(tmp_path), "--base-url", "http://127.0.0.1:9/v1", "--out", str(out)]
        with pytest.raises(SystemExit) as exit_info:
            main(argv + [flag, "0"])
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_sequence_longer_than_the_models_context_is_refused(tmp_path, shards, capsys):
    """A model trained past its max_seq_len would be exported claiming the shorter context."""
    from codegemma.config import preset

    context = preset("tiny-gemma").max_seq_len
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "run", shards, steps=1))
    assert main(["train", "run", str(recipe), "--set", f"data.seq_len={context + 1}"]) == 1
    assert (f"data.seq_len {context + 1} is longer than the model's context of {context} tokens"
            in capsys.readouterr().err)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_shards_of_another_vocabulary_or_other_sentinel_ids_are_refused(tmp_path, small_tokenizer_path, capsys):
    from .conftest import write_shards

    other = write_shards(tmp_path / "other", meta={"vocab_size": 8192, "tokenizer": "other/tokenizer.json"})
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_toml(tmp_path / "run", other, steps=1))
    tokenizer = ["--set", f"tokenizer={small_tokenizer_path.as_posix()}"]
    assert main(["train", "run", str(recipe), *tokenizer]) == 1
    assert capsys.readouterr().err.strip() == (
        f"codegemma train: error: data.train {other}: its shards were tokenized with a vocabulary of 8192 tokens "
        "(other/tokenizer.json), the run's tokenizer has 600: rebuild the shards with the run's tokenizer, or "
        "start from a model of the shards' tokenizer")
    assert main(["train", "run", str(recipe)]) == 1  # no tokenizer: the preset's 512-row embedding
    assert "the model's embedding has 512 rows" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()

    from codegemma.fim import sentinel_ids
    from codegemma.tokenizer import Tokenizer

    ids = sentinel_ids(Tokenizer.from_hf_dir(small_tokenizer_path.parent))
    moved = {name: token_id + 100 for name, token_id in ids.items()}  # as <unused..> tokens renamed for the data
    renamed = write_shards(tmp_path / "renamed", meta={"vocab_size": 600, "sentinel_ids": moved,
                                                       "fim_sentinels_from": ["<a>", "<b>", "<c>", "<d>"]})
    recipe.write_text(recipe_toml(tmp_path / "run", renamed, steps=1))
    assert main(["train", "run", str(recipe), *tokenizer]) == 1
    assert capsys.readouterr().err.strip() == (
        f"codegemma train: error: data.train {renamed}: its shards have <|fim_prefix|> at id {moved['<|fim_prefix|>']}, "
        f"the run's tokenizer has it at id {ids['<|fim_prefix|>']}: the shards were built with fim_sentinels_from = "
        "['<a>', '<b>', '<c>', '<d>']: give the run the same model.fim_sentinels_from")

    ours = write_shards(tmp_path / "ours", meta={"vocab_size": 600, "sentinel_ids": ids})
    recipe.write_text(recipe_toml(tmp_path / "run", ours, steps=1))
    assert main(["train", "run", str(recipe), *tokenizer]) == 0
