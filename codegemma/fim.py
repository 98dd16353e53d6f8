"""The fill-in-the-middle (FIM) format: one module for inference prompts and training examples.

Both the completion server and the data pipeline build their sequences here, so what a model is
served is exactly what it was trained on. A FIM sequence is a list of *pieces*: each piece is either
exactly one sentinel string or plain text. Pieces are tokenized one by one (`encode_pieces`), so
sentinels always become their single token id and text never merges across a sentinel.

Layouts (CodeGemma report, Fig. 2 and 4; SPM as Bavarian et al. 2022 appendix D, "variant 2"):

    PSM:  [path "\n"] <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle
    SPM:  [path "\n"] <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle

SPM keeps prefix and middle one unbroken run (the cursor can sit inside a token) and puts the
suffix first, so a growing prefix extends a cached sequence instead of invalidating it.
Repository context comes first, as `path\\ncontent` blocks joined by <|file_separator|>.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

PSM = "psm"
SPM = "spm"
ORDERS = (PSM, SPM)
# Infilling is also scored left to right: the prefix alone, as a completion without FIM sees it
L2R = "l2r"
INFILL_ORDERS = (*ORDERS, L2R)


@dataclass(frozen=True)
class FimSentinels:
    """The four sentinel strings of a vocabulary (CodeGemma's by default, ids 67-70 there)."""

    prefix: str = "<|fim_prefix|>"
    middle: str = "<|fim_middle|>"
    suffix: str = "<|fim_suffix|>"
    file_separator: str = "<|file_separator|>"

    def all(self) -> tuple[str, str, str, str]:
        return (self.prefix, self.middle, self.suffix, self.file_separator)


CODEGEMMA_SENTINELS = FimSentinels()


class _Encoder(Protocol):
    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def token_to_id(self, token: str) -> int | None: ...


def fim_prompt(prefix: str, suffix: str, order: str = PSM, path: str | None = None,
               sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> list[str]:
    """The pieces of a single-file FIM prompt; the model continues with the middle."""
    if order not in ORDERS:
        raise ValueError(f"unknown FIM order {order!r}; expected one of {ORDERS}")
    s = sentinels
    header = [path + "\n"] if path else []
    if order == PSM:
        body = [s.prefix, prefix, s.suffix, suffix, s.middle]
    else:
        body = [s.prefix, s.suffix, suffix, s.middle, prefix]
    return [p for p in header + body if p != ""]


def repo_context_pieces(files: Iterable[tuple[str, str]], sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> list[str]:
    """Context files as `path\\ncontent` blocks, each followed by <|file_separator|>."""
    pieces: list[str] = []
    for path, content in files:
        pieces += [f"{path}\n{content}", sentinels.file_separator]
    return pieces


def repo_fim_prompt(context: Sequence[tuple[str, str]], prefix: str, suffix: str, order: str = PSM,
                    path: str | None = None, sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> list[str]:
    """Repository context files, then the FIM prompt of the file at the cursor."""
    return repo_context_pieces(context, sentinels) + fim_prompt(prefix, suffix, order, path, sentinels)


def fim_example(prefix: str, middle: str, suffix: str, order: str = PSM, path: str | None = None,
                sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> list[str]:
    """A training example: the inference prompt for this split followed by its middle."""
    pieces = fim_prompt(prefix, suffix, order, path, sentinels)
    if order == SPM and prefix:
        pieces[-1] = prefix + middle  # prefix and middle are one run of text in SPM
    elif middle:
        pieces.append(middle)
    return pieces


def split_points(text: str, rng: random.Random, suffix_line_rate: float = 0.0,
                 line_rate: float = 0.0, single_line_rate: float = 0.0) -> tuple[str, str, str]:
    """Character-level split into (prefix, middle, suffix) at two uniform points (empty pieces allowed).

    With probability `suffix_line_rate` the suffix is moved to start at the next line start, the
    "syntactically more natural" suffix of the CodeGemma report (its own rule is unpublished): the
    middle then ends a line, as when a completion fills the rest of a line and lines below it. The
    prefix edge stays character-level, so the cursor can still sit anywhere, inside a token too.

    With probability `line_rate` both points move to the next line start: the middle is whole
    lines, the line-level spans of Bavarian et al. 2022 (Table 2: the best single-line infilling
    of their span choices, at the cost of random-span infilling, hence a share, not all).
    With probability `single_line_rate` the middle is one whole non-blank line, newline included,
    drawn uniformly from the text's non-blank lines: the task of single-line infilling (HumanEval's
    and the training evaluation's), where the suffix starts right after the hole. It takes
    precedence over the two rates above; a text without a non-blank line keeps the points drawn.

    Rates of 0 draw nothing from `rng`, so they leave the character-level splits as they were.
    """
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    if single_line_rate and rng.random() < single_line_rate:
        lines = _nonblank_lines(text)
        if lines:
            a, b = rng.choice(lines)
            return text[:a], text[a:b], text[b:]
    if suffix_line_rate and rng.random() < suffix_line_rate:
        b = _line_start_at_or_after(text, b)
    if line_rate and rng.random() < line_rate:
        a, b = _line_start_at_or_after(text, a), _line_start_at_or_after(text, b)
    return text[:a], text[a:b], text[b:]


def _nonblank_lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line of `text` with a non-space character, its newline included."""
    spans, start = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            spans.append((start, start + len(line)))
        start += len(line)
    return spans


def _line_start_at_or_after(text: str, i: int) -> int:
    """The first index >= i that starts a line (or the end of `text`)."""
    if i == 0 or i >= len(text) or text[i - 1] == "\n":
        return i
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def transform_file(text: str, rng: random.Random, fim_rate: float, spm_rate: float = 0.5, path: str | None = None,
                   sentinels: FimSentinels = CODEGEMMA_SENTINELS, suffix_line_rate: float = 0.0,
                   line_rate: float = 0.0, single_line_rate: float = 0.0) -> list[str]:
    """One file of a training sample: with probability `fim_rate` FIM-formatted, else `path\\ntext`.

    The path line is never split: split points are drawn inside the file's text only.
    """
    if rng.random() >= fim_rate:
        return [f"{path}\n{text}" if path else text] if (path or text) else []
    prefix, middle, suffix = split_points(text, rng, suffix_line_rate, line_rate, single_line_rate)
    order = SPM if rng.random() < spm_rate else PSM
    return fim_example(prefix, middle, suffix, order, path, sentinels)


def undo_fim(pieces: Sequence[str], sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> tuple[str | None, str]:
    """Invert `fim_example` / `transform_file` for one file: returns (path, original text).

    The path is returned only for FIM-formatted pieces (a plain file keeps `path\\n` in its text).
    """
    s = sentinels
    pieces = list(pieces)
    if s.prefix not in pieces:
        return None, "".join(pieces)
    start = pieces.index(s.prefix)
    path = None
    if start == 1:
        path = pieces[0][:-1] if pieces[0].endswith("\n") else pieces[0]
    rest = pieces[start + 1:]
    if rest and rest[0] == s.suffix:  # SPM: suffix, middle sentinel, then prefix + middle
        mid = rest.index(s.middle)
        suffix = "".join(rest[1:mid])
        return path, "".join(rest[mid + 1:]) + suffix
    suf = rest.index(s.suffix)
    mid = rest.index(s.middle)
    prefix = "".join(rest[:suf])
    suffix = "".join(rest[suf + 1:mid])
    middle = "".join(rest[mid + 1:])
    return path, prefix + middle + suffix


def sentinel_ids(tokenizer: _Encoder, sentinels: FimSentinels = CODEGEMMA_SENTINELS) -> dict[str, int]:
    """Map each sentinel string to its id in this tokenizer; raises if the vocabulary lacks one."""
    ids = {}
    for text in sentinels.all():
        token_id = tokenizer.token_to_id(text)
        if token_id is None:
            raise ValueError(f"tokenizer has no FIM sentinel {text!r}: this model cannot infill")
        ids[text] = token_id
    return ids


def encode_pieces(tokenizer: _Encoder, pieces: Sequence[str], ids: dict[str, int], literal_text: bool = False
                  ) -> list[int]:
    """Token ids of a piece list: sentinels by id, text through the tokenizer (no BOS).

    With `literal_text`, a sentinel spelled inside a text piece (code about tokenizers, this very
    module) is encoded as ordinary text rather than becoming the sentinel's id, so user text can
    never forge a prompt boundary.
    """
    out: list[int] = []
    for piece in pieces:
        if piece in ids:
            out.append(ids[piece])
        elif piece:
            out += encode_literal(tokenizer, piece, ids) if literal_text else tokenizer.encode(piece, add_bos=False)
    return out


def encode_literal(tokenizer: _Encoder, text: str, specials: Iterable[str]) -> list[int]:
    """Encode `text` so that no string in `specials` inside it turns into its special id: each
    occurrence is encoded in two parts, which no vocabulary entry of the special can match."""
    specials = [s for s in specials if len(s) > 1 and s in text]
    if not specials:
        return tokenizer.encode(text, add_bos=False)
    out: list[int] = []
    start = 0
    while start < len(text):
        hits = [(text.find(s, start), s) for s in specials]
        hits = [(at, s) for at, s in hits if at != -1]
        if not hits:
            out += tokenizer.encode(text[start:], add_bos=False)
            break
        at, special = min(hits)
        for part in (text[start:at], special[:1], special[1:]):
            if part:
                out += tokenizer.encode(part, add_bos=False)
        start = at + len(special)
    return out
