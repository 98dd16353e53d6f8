"""Tokenizers and a tiny random model with CodeGemma's vocabulary layout, for tests without weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import trainers

from codegemma.tokenizer import Tokenizer
from codegemma.train import tokenizer_train


def _corpus() -> list[str]:
    """Python's own standard library: real code that every install has."""
    root = Path(json.__file__).parent.parent
    files = sorted(root.glob("[a-f]*.py"))[:40]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


@pytest.fixture(scope="session")
def fim_tokenizer() -> Tokenizer:
    """CodeGemma layout: FIM sentinels at 67-70, turn markers at 106/107, byte fallback."""
    return Tokenizer(tokenizer_train.train(_corpus(), vocab_size=1024))


@pytest.fixture(scope="session")
def plain_tokenizer() -> Tokenizer:
    """A Gemma-3-like vocabulary: turn markers and an image marker, no FIM sentinels."""
    tok = tokenizer_train.build_untrained()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False,
                                  initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\t", "▁"])
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return Tokenizer(tok)


@pytest.fixture(scope="session")
def tiny_fim_model(fim_tokenizer):
    import torch

    from codegemma.config import preset
    from codegemma.model import Gemma

    config = preset("tiny-gemma")
    config.vocab_size = fim_tokenizer.vocab_size
    model = Gemma(config)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return model.eval()
