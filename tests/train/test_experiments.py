import json

import numpy as np
import pytest
import torch

from codegemma.config import preset
from codegemma.data.shards import ShardWriter
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.train import experiments
from codegemma.train.evaluate import INFILL_ANSWERS
from codegemma.train.experiments import (Scale, _recipe, _scale_record, demo_shards, later_file_share,
                                         paired_difference, segment_losses)


def test_later_file_loss_counts_only_tokens_after_a_separator(tmp_path):
    sep = 70
    writer = ShardWriter(tmp_path / "s", 8)
    # segment 1: file A (3 tokens), separator, file B; segment 2: one file only
    writer.add([2, 10, 11, sep, 12, 13, 2, 14], [1, 1, 1, 1, 1, 1, 2, 2], [True] * 8)
    writer.close()
    vocab = 80

    def uniform(ids, segment_ids=None):
        return torch.zeros(*ids.shape, vocab)

    out = segment_losses(uniform, tmp_path / "s", sep, batch_size=1)
    # trained targets: 10, 11, sep, 12, 13 (segment 1) and 14 (segment 2); later: targets after the separator
    assert out["all_tokens"] == 6 and out["later_files_tokens"] == 2
    assert np.isclose(out["all_loss"], np.log(vocab)) and np.isclose(out["later_files_loss"], np.log(vocab))


def _nll(model, ids):
    """Next-token losses of one document on its own."""
    logits = model(torch.tensor([ids]))[0, :-1]
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="none")


def test_later_files_alone_are_scored_as_standalone_documents(tmp_path):
    """Each later file is scored twice: after the files before it, and as a sample of its own
    (<bos> then the file), which must equal running the model on that file alone."""
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma3"))  # sliding window 8: the rows below reach past it
    model.init_weights()
    model.eval()
    bos, sep, eos = 2, 70, 1
    first, second, third = [10, 11, 12, 13, 14, 15, 16, 17, 18], [20, 21, 22, 23], [30, 31]
    doc1 = [bos, *first, sep, *second, sep, *third, eos]
    doc2 = [bos, 40, 41, sep, 42, eos]
    row = doc1 + doc2 + [0, 0]
    seg = [1] * len(doc1) + [2] * len(doc2) + [0, 0]
    writer = ShardWriter(tmp_path / "s", len(row))
    writer.add(row, seg, [s > 0 for s in seg])
    writer.close()
    with torch.no_grad():
        out = segment_losses(model, tmp_path / "s", sep, batch_size=1, bos=bos)
        # the targets from each document's first separator on
        together = torch.cat([_nll(model, doc1)[1 + len(first):], _nll(model, doc2)[3:]])
        alone = [_nll(model, [bos, *second, sep]), _nll(model, [bos, *third, eos]), _nll(model, [bos, 42, eos])]
    assert out["later_files_tokens"] == out["later_files_alone_tokens"] == 5 + 3 + 2
    assert np.isclose(out["later_files_loss"], together.mean().item(), atol=1e-5)
    assert np.isclose(out["later_files_alone_loss"], torch.cat(alone).mean().item(), atol=1e-5)
    assert [f[2] for f in out["per_file"]] == [5, 3, 2]
    assert np.allclose([f[1] for f in out["per_file"]], [a.sum().item() for a in alone], atol=1e-4)


def test_paired_difference_weights_files_by_tokens():
    a = [(10.0, 10), (2.0, 1)]  # per-token losses 1.0 and 2.0
    b = [(8.0, 10), (3.0, 1)]  # 0.8 and 3.0
    out = paired_difference(a, b)
    assert np.isclose(out["mean"], (11.0 - 12.0) / 11) and out["files"] == 2 and out["tokens"] == 11
    assert out["stderr"] > 0
    with pytest.raises(CodegemmaError, match="same files"):
        paired_difference(a, b[:1])


def test_later_file_share_counts_tokens_after_a_separator_in_their_own_document(tmp_path):
    sep = 70
    writer = ShardWriter(tmp_path / "s", 8)
    writer.add([2, 10, sep, 11, 2, 12, 13, 0], [1, 1, 1, 1, 2, 2, 2, 0], [True] * 7 + [False])
    writer.add([2, 14, 15, 16, 17, 18, 19, 1], [1] * 8, [True] * 8)
    writer.close()
    # later: the separator's position onward in the first document (sep, 11); 15 trained tokens in all
    assert np.isclose(later_file_share(tmp_path / "s", sep), 2 / 15)


def test_experiment_recipes_are_valid(tmp_path):
    scale = Scale(steps=8)
    r = _recipe("x", tmp_path / "run", tmp_path / "tok.json", tmp_path / "train", scale, 4, tmp_path / "heldout")
    assert r.model.overrides["d_model"] == scale.d_model and r.train.steps == 8 and r.eval.every == 4
    assert r.eval.infill_orders == ["psm", "spm", "l2r"]  # the left-to-right baseline on the same lines
    start = Scale(steps=8, init=str(tmp_path / "start"), lr=2e-4, precision="bf16")
    r = _recipe("x", tmp_path / "run", tmp_path / "tok.json", tmp_path / "train", start, 4, None)
    assert (r.model.init, r.model.overrides) == (str(tmp_path / "start"), {})
    assert (r.optim.lr, r.train.precision) == (2e-4, "bf16")


def test_results_record_the_size_only_of_a_model_built_from_scratch():
    assert _scale_record(Scale())["d_model"] == Scale.d_model
    record = _scale_record(Scale(init="runs/start", seed=2))
    assert record["init"] == "runs/start" and record["seed"] == 2
    assert not {"d_model", "n_layers", "n_heads", "head_dim", "d_ff"} & set(record)  # the start's own size


def test_a_rerun_reuses_its_runs_only_at_the_same_settings(tmp_path):
    """The variants resume from their checkpoints: under other settings they would report runs that
    never happened (the first 150 steps on one schedule, the rest on another)."""
    out = tmp_path / "docs" / "fim-rate"
    runs = experiments._runs_dir(tmp_path, out, Scale(steps=150), rates=[0.0, 0.5])
    assert runs == tmp_path / "experiments" / "fim-rate"
    (runs / "fim0").mkdir()
    (runs / "fim0" / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 5.0}\n')  # it trained
    assert experiments._runs_dir(tmp_path, out, Scale(steps=150), rates=[0.0, 0.5]) == runs
    with pytest.raises(CodegemmaError, match=r"experiments/fim-rate holds this experiment's runs at other settings "
                                             r"\(lr 0.003 there, 0.001 here; steps 150 there, 300 here\): choose "
                                             r"another --out"):
        experiments._runs_dir(tmp_path, out, Scale(steps=300, lr=1e-3), rates=[0.0, 0.5])
    (runs / "settings.json").unlink()  # runs from before the settings were recorded: nothing to compare
    with pytest.raises(CodegemmaError, match="holds runs whose settings were not recorded"):
        experiments._runs_dir(tmp_path, out, Scale(steps=150), rates=[0.0, 0.5])


def _fake_demo_shards(out, **meta):
    (out / "train").mkdir(parents=True)
    (out / "train" / "index.json").write_text(json.dumps({"meta": meta}))


def test_demo_shards_reuse_only_shards_built_with_the_same_settings(tmp_path):
    # `ensure_corpus` (the slow part) is never reached: cached shards are checked first
    out = tmp_path / "shards"
    _fake_demo_shards(out, fim_rate=0.5, fim_chunk_chars=500, fim_suffix_line_rate=0.0, spm_rate=0.5,
                      file_order="codegemma", seq_len=256, fim_chunks_run_on=True)
    assert demo_shards(tmp_path, 0.5, out=out, fim_chunk_chars=500) == out
    with pytest.raises(CodegemmaError, match=r"fim_suffix_line_rate=0.0 \(asked 0.5\)"):
        demo_shards(tmp_path, 0.5, out=out, fim_chunk_chars=500, fim_suffix_line_rate=0.5)
    with pytest.raises(CodegemmaError, match=r"fim_rate=0.5 \(asked 0.0\)"):
        demo_shards(tmp_path, 0.0, out=out, fim_chunk_chars=500)
    with pytest.raises(CodegemmaError, match=r"spm_rate=0.5 \(asked 1.0\)"):
        demo_shards(tmp_path, 0.5, out=out, fim_chunk_chars=500, spm_rate=1.0)


def test_demo_shards_check_their_settings_before_building_the_corpus(tmp_path):
    with pytest.raises(CodegemmaError, match="FIM rates must be in"):
        demo_shards(tmp_path / "demo", 1.5)
    assert not (tmp_path / "demo").exists()  # no 12 MB corpus copied, no tokenizer trained


def test_chunked_demo_shards_from_before_plain_chunks_ran_on_are_not_reused(tmp_path):
    out = tmp_path / "shards"
    _fake_demo_shards(out, fim_rate=0.5, fim_chunk_chars=500, fim_suffix_line_rate=0.0, spm_rate=0.5,
                      file_order="codegemma", seq_len=256)
    with pytest.raises(CodegemmaError, match=r"fim_chunks_run_on=0 \(asked True\)"):
        demo_shards(tmp_path, 0.5, out=out, fim_chunk_chars=500)


def test_demo_shards_from_before_fim_pieces_were_recorded_count_as_whole_file(tmp_path):
    out = tmp_path / "shards"
    _fake_demo_shards(out, fim_rate=0.5, spm_rate=0.5, file_order="codegemma", seq_len=256)
    assert demo_shards(tmp_path, 0.5, out=out) == out
    with pytest.raises(CodegemmaError, match=r"fim_chunk_chars=0 \(asked 500\)"):
        demo_shards(tmp_path, 0.5, out=out, fim_chunk_chars=500)


def test_packing_plot_shows_the_paired_difference_when_there_is_one(tmp_path):
    import matplotlib.pyplot as plt

    from codegemma.train.experiments import _plot_packing

    for order in ("codegemma", "random"):
        (tmp_path / order).mkdir()
        (tmp_path / order / "metrics.jsonl").write_text(json.dumps({"step": 10, "kind": "train", "loss": 3.0}) + "\n")
    arm = {"later_files_loss": 2.4, "later_files_alone_loss": 2.7}
    results = {"codegemma": {"order": "codegemma", **arm}, "random": {"order": "random", **arm}}
    assert len(_plot_packing(tmp_path, results).axes) == 2
    paired = {"given_files_before": {"mean": 0.03, "stderr": 0.01}, "alone": {"mean": 0.0, "stderr": 0.01}}
    fig = _plot_packing(tmp_path, {**results, "random_minus_codegemma": paired, "corpus": "somewhere"})
    assert len(fig.axes) == 3 and "random minus codegemma" in fig.axes[2].get_title()
    plt.close("all")


def test_fim_rates_are_tested_line_by_line_against_rate_zero(tmp_path):
    def answers(rate, outcomes):
        run = tmp_path / f"fim{rate}"
        run.mkdir()
        records = [{"order": order, "path": "m.py", "line": i, "exact": hit}
                   for order, hits in outcomes.items() for i, hit in enumerate(hits)]
        (run / INFILL_ANSWERS).write_text("".join(json.dumps(r) + "\n" for r in records))

    answers("0", {"psm": [False] * 6, "spm": [True] + [False] * 5, "l2r": [True] * 2 + [False] * 4})
    answers("0.5", {"psm": [True] * 5 + [False], "spm": [True] * 6, "l2r": [True] * 2 + [False] * 4})
    results = {"0": {}, "0.5": {}, "0.9": {}}  # rate 0.9 left no answers: nothing to test
    experiments.add_paired_tests(results, tmp_path)
    tests = {(t["first_group"], t["second_group"]): t for t in results["0.5"]["paired_vs_fim0"]}
    assert list(tests) == [("psm", "psm"), ("spm", "spm"), ("l2r", "l2r"), ("spm", "l2r")]
    assert (tests["psm", "psm"]["only_first"], tests["psm", "psm"]["p_value"]) == (5, 2 / 2 ** 5)
    best = tests["spm", "l2r"]  # each model at its best prompt
    assert (best["both"], best["only_first"], best["only_second"]) == (2, 4, 0)
    assert tests["l2r", "l2r"]["p_value"] == 1.0
    assert "paired_vs_fim0" not in results["0"] and "paired_vs_fim0" not in results["0.9"]


def test_settings_of_a_start_that_trained_nothing_do_not_block_a_rerun(tmp_path):
    """A start that stopped before any variant trained (a bad --lr, an interrupt while the shards
    were built) left its settings recorded, and the corrected rerun was refused as "runs at other
    settings" although there was no run to continue."""
    out = tmp_path / "docs" / "fim-rate"
    runs = experiments._runs_dir(tmp_path, out, Scale(steps=150, lr=-1.0), rates=[0.0, 0.5])
    (runs / "fim0").mkdir()  # the first variant's directory (its lock file), nothing trained
    (runs / "fim0" / ".lock").write_text("")
    assert experiments._runs_dir(tmp_path, out, Scale(steps=150), rates=[0.0, 0.5]) == runs
    assert json.loads((runs / "settings.json").read_text())["lr"] == Scale.lr
    (runs / "fim0" / "checkpoints").mkdir()
    (runs / "fim0" / "checkpoints" / "step_00000050.pt").write_bytes(b"")
    with pytest.raises(CodegemmaError, match="at other settings"):  # now there is a run to continue
        experiments._runs_dir(tmp_path, out, Scale(steps=300), rates=[0.0, 0.5])


@pytest.mark.parametrize("experiment", ["fim_rate", "packing"])
@pytest.mark.parametrize("scale, message", [
    (Scale(steps=8, lr=0.0), "optim.lr must be positive"),
    (Scale(steps=8, seq_len=16), "infill_max_prompt_tokens must be at least 1"),
    (Scale(steps=8, init="no/such/start"), "--init no/such/start: not found"),
])
def test_bad_settings_are_refused_before_the_corpus_is_built(tmp_path, experiment, scale, message):
    """They used to surface when the first variant started, after minutes of building the corpus,
    its tokenizer and the shards, and after the settings had been recorded for the runs."""
    with pytest.raises(CodegemmaError, match=message):
        getattr(experiments, experiment)(tmp_path / "demo", tmp_path / "out", scale=scale)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "out").exists()
