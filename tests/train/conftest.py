"""Fixtures for training tests: small shard directories and recipe files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codegemma.data.shards import ShardWriter


# The models here are tiny: one thread avoids paying for thread handoffs on a busy machine.
torch.set_num_threads(1)


def write_shards(path: Path, n: int = 64, seq_len: int = 32, vocab: int = 512, seed: int = 0,
                 meta: dict | None = None) -> Path:
    """Packed rows of two documents and some padding; each document repeats a short random motif,
    so a model can learn it (the loss must fall) while every row differs."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(path, seq_len, sequences_per_shard=max(1, n // 3), meta=meta)
    for _ in range(n):
        cut, end = int(rng.integers(seq_len // 3, seq_len // 2)), int(rng.integers(seq_len - 6, seq_len + 1))
        tokens = np.zeros(seq_len, np.int64)
        for start, stop in ((0, cut), (cut, end)):
            motif = rng.integers(5, vocab, 4)
            tokens[start:stop] = np.resize(motif, stop - start)
        seg = np.zeros(seq_len, np.int32)
        seg[:cut], seg[cut:end] = 1, 2
        writer.add(tokens, seg, seg > 0)
    return writer.close()


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_shards(tmp_path / "shards")


def recipe_toml(out_dir: Path, shards: Path, steps: int = 6, extra: str = "") -> str:
    return f"""
name = "test"
out_dir = "{out_dir.as_posix()}"
[model]
preset = "tiny-gemma"
[data]
train = "{shards.as_posix()}"
seq_len = 32
[optim]
lr = 3e-3
warmup_steps = 2
[train]
steps = {steps}
batch_size = 4
[log]
every = 1
tensorboard = false
plots = false
progress = false
{extra}
"""


@pytest.fixture(scope="session")
def small_tokenizer_path(tmp_path_factory) -> Path:
    """A 600-token BPE vocabulary with the CodeGemma layout, trained on the stdlib's json package."""
    import sysconfig

    from codegemma.train import tokenizer_train

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted((stdlib / "json").glob("*.py"))]
    return tokenizer_train.save(tokenizer_train.train(texts, 600), tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def small_tokenizer(small_tokenizer_path):
    from codegemma.tokenizer import Tokenizer

    return Tokenizer.from_hf_dir(small_tokenizer_path.parent)
