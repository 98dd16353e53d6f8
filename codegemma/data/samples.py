"""Training samples: a repository's files, in packing order, each FIM-transformed on its own, joined
by <|file_separator|> between <bos> and <eos>; natural-language documents as <bos> text <eos>.

FIM goes through the shared `codegemma.fim` module (`transform_file`), so training examples have
exactly the layout the completion server prompts with: character-level split points, PSM/SPM
50/50, the path line never split. Text pieces are encoded literally: a sentinel spelled inside a
file (code about tokenizers) stays text and cannot forge a FIM boundary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS, encode_pieces, sentinel_ids, transform_file


@dataclass(frozen=True)
class FimConfig:
    rate: float = 0.8  # CodeGemma; 0.9 for the 2B v1.1
    spm_rate: float = 0.5
    include_paths: bool = True
    # 0: each file is one FIM candidate (document level). N > 0: a file longer than N characters is
    # cut at line ends into pieces of at most N, each a FIM candidate (`repository_pieces`). With
    # a short context, a whole-file FIM example rarely fits one row (the demo corpus at 256 tokens:
    # under 1% of rows hold prefix, suffix and middle together); pieces that fit give infilling
    # examples the model can learn from, the effect context-level FIM has (Bavarian et al. 2022).
    chunk_chars: int = 0
    # Probability that a FIM example's suffix starts at a line start (`codegemma.fim.split_points`),
    # CodeGemma's "more syntactically natural" suffix; 0 keeps both split points character-level.
    suffix_line_rate: float = 0.0
    # Probability that a FIM example's middle is whole lines (both split points at line starts).
    line_rate: float = 0.0
    # Probability that a FIM example's middle is one non-blank line (single-line infilling).
    single_line_rate: float = 0.0

    def __post_init__(self):
        rates = {"rate": self.rate, "spm_rate": self.spm_rate, "suffix_line_rate": self.suffix_line_rate,
                 "line_rate": self.line_rate, "single_line_rate": self.single_line_rate}
        bad = {k: v for k, v in rates.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise CodegemmaError("FIM rates must be in [0, 1], got " + " ".join(f"{k}={v}" for k, v in bad.items()))
        if self.chunk_chars < 0:
            raise CodegemmaError(f"fim.chunk_chars must be 0 (whole files) or positive, got {self.chunk_chars}")


def sample_rng(seed: int, key: str) -> random.Random:
    """The random stream of one repository: the same for a seed, whatever worker or order processes it."""
    return random.Random(f"{seed}:{key}")


def repository_pieces(files: list[tuple[str, str]], rng: random.Random, fim: FimConfig) -> list[list[str]]:
    """FIM pieces of each file, in order. With `fim.chunk_chars`, a long file's chunks are each
    transformed on its own. A FIM chunk is a document of its own (path line included), set off by
    <|file_separator|>; the chunks left plain between them run on as the file's text, under one path
    line, so that a model does not learn that files end every `chunk_chars` characters."""
    out = []
    for path, text in files:
        pieces: list[str] = []
        plain_run = False  # whether the last piece is plain text that the next plain chunk continues
        for i, part in enumerate(line_chunks(text, fim.chunk_chars)):
            chunk = transform_file(part, rng, fim.rate, fim.spm_rate, path if fim.include_paths else None,
                                   suffix_line_rate=fim.suffix_line_rate, line_rate=fim.line_rate,
                                   single_line_rate=fim.single_line_rate)
            plain = CODEGEMMA_SENTINELS.prefix not in chunk
            if plain and plain_run:
                pieces[-1] += part
            else:
                if i:
                    pieces.append(CODEGEMMA_SENTINELS.file_separator)
                pieces += chunk
            plain_run = plain
        out.append(pieces)
    return out


def line_chunks(text: str, max_chars: int) -> list[str]:
    """`text` cut at line ends into consecutive pieces of at most `max_chars` characters (a longer
    line is a piece of its own); all of it in one piece when `max_chars` is 0 or not exceeded."""
    if not max_chars or len(text) <= max_chars:
        return [text]
    chunks, current = [], ""
    for line in text.splitlines(keepends=True):
        if current and len(current) + len(line) > max_chars:
            chunks.append(current)
            current = ""
        current += line
    if current:
        chunks.append(current)
    return chunks


class SampleEncoder:
    """Turns piece lists into token ids with one tokenizer (ids of sentinels and bos/eos looked up once)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = sentinel_ids(tokenizer)
        self.bos_id = _special(tokenizer, "bos_id", "<bos>")
        self.eos_id = _special(tokenizer, "eos_id", "<eos>")
        self.pad_id = _special(tokenizer, "pad_id", "<pad>")
        self.file_separator = self.ids[CODEGEMMA_SENTINELS.file_separator]

    def encode_file(self, pieces: list[str]) -> list[int]:
        return encode_pieces(self.tokenizer, pieces, self.ids, literal_text=True)

    def repository(self, encoded: list[list[int]], seq_len: int) -> list[np.ndarray]:
        """Samples of one repository from its files' ids (`encode_file`), in order. A repository longer
        than seq_len is split on file boundaries (each part its own <bos>...<eos> sample); a single file
        longer than seq_len stays whole and is chunked later by the packer."""
        samples, current = [], []
        size = 2  # <bos> and <eos>
        for ids in encoded:
            extra = len(ids) + (1 if current else 0)
            if current and size + extra > seq_len:
                samples.append(self._join(current))
                current, size = [], 2
                extra = len(ids)
            current.append(ids)
            size += extra
        if current:
            samples.append(self._join(current))
        return samples

    def _join(self, files: list[list[int]]) -> np.ndarray:
        out = [self.bos_id]
        for i, ids in enumerate(files):
            if i:
                out.append(self.file_separator)
            out += ids
        out.append(self.eos_id)
        return np.asarray(out, dtype=np.int32)

    def text(self, text: str) -> np.ndarray:
        ids = self.encode_file([text])
        return np.asarray([self.bos_id] + ids + [self.eos_id], dtype=np.int32)


def _special(tokenizer, attr: str, token: str) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        value = tokenizer.token_to_id(token)
    if value is None:
        raise CodegemmaError(f"tokenizer has no {token} token")
    return int(value)


def load_tokenizer(spec: str, base: Path | None = None, fim_sentinels_from: Sequence[str] = ()):
    """A tokenizer from a tokenizer.json / tokenizer.model / .gguf file, a Hugging Face directory or
    `default` (the default model's), with `fim_sentinels_from` spelled as the FIM sentinels."""
    tokenizer = _load_tokenizer_file(spec, base)
    if fim_sentinels_from:
        from codegemma.tokenizer import with_fim_sentinels

        tokenizer = with_fim_sentinels(tokenizer, list(fim_sentinels_from))
    return tokenizer


def _load_tokenizer_file(spec: str, base: Path | None):
    from codegemma.tokenizer import Tokenizer

    if spec == "default":
        from codegemma.checkpoints.loading import default_gguf_path

        return Tokenizer.from_gguf(default_gguf_path())
    path = Path(spec).expanduser()
    if not path.is_absolute() and base is not None and not path.exists():
        path = base / path
    if path.is_dir():
        return Tokenizer.from_hf_dir(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CodegemmaError(f"tokenizer file not found: {path}")
        return Tokenizer.from_gguf(path)
    return Tokenizer.from_file(path)
