import numpy as np
import torch

from codegemma.data.shards import ShardWriter
from codegemma.train.experiments import Scale, _recipe, segment_losses


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
