import json

import numpy as np
import pytest
import torch

from codegemma.data.shards import ShardWriter
from codegemma.errors import CodegemmaError
from codegemma.train.experiments import Scale, _recipe, demo_shards, segment_losses


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


def test_experiment_recipes_are_valid(tmp_path):
    scale = Scale(steps=8)
    r = _recipe("x", tmp_path / "run", tmp_path / "tok.json", tmp_path / "train", scale, 4, tmp_path / "heldout")
    assert r.model.overrides["d_model"] == scale.d_model and r.train.steps == 8 and r.eval.every == 4
    assert r.eval.infill_orders == ["psm", "spm", "l2r"]  # the left-to-right baseline on the same lines
    start = Scale(steps=8, init=str(tmp_path / "start"), lr=2e-4, precision="bf16")
    r = _recipe("x", tmp_path / "run", tmp_path / "tok.json", tmp_path / "train", start, 4, None)
    assert (r.model.init, r.model.overrides) == (str(tmp_path / "start"), {})
    assert (r.optim.lr, r.train.precision) == (2e-4, "bf16")


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
