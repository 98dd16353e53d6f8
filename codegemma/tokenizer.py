"""The Gemma tokenizer, built on the `tokenizers` library.

Loads a Hugging Face `tokenizer.json`, a SentencePiece `tokenizer.model`, or the SentencePiece
vocabulary stored in a GGUF file (pieces, scores and token types). Gemma's SentencePiece model is
BPE with byte fallback and no dummy prefix: spaces become "▁", a merge's priority is the score of
the piece it produces, and control / user-defined pieces are matched as whole tokens first.
Special tokens are looked up by name, never by a hard-coded id.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS
from codegemma.textfiles import read_json

# SentencePiece piece types (also GGUF tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# name -> token text, looked up in whatever vocabulary is loaded
SPECIAL_NAMES = {
    "pad": "<pad>",
    "eos": "<eos>",
    "bos": "<bos>",
    "unk": "<unk>",
    "mask": "<mask>",
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
    "fim_prefix": "<|fim_prefix|>",
    "fim_middle": "<|fim_middle|>",
    "fim_suffix": "<|fim_suffix|>",
    "file_separator": "<|file_separator|>",
}


def _as_vocab_piece(piece: str) -> str:
    """GGUF stores runs of spaces with real spaces; the vocabulary works on "▁"."""
    return piece.replace(" ", "▁") if " " in piece and not piece.strip() else piece


def spm_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges recovered from a SentencePiece vocabulary: every way to build a piece from two
    pieces, best first. Gemma's vocabulary is ordered by merge priority (its stored scores are not),
    so a merge ranks by the id of the piece it builds; among splits of one piece, longer left first."""
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []
    for piece in pieces:
        for cut in range(len(piece) - 1, 0, -1):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((left, right))
    return merges


def build_spm_bpe(pieces: list[str], types: list[int]) -> HFTokenizer:
    pieces = [_as_vocab_piece(p) for p in pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    unk = next((p for p, t in zip(pieces, types) if t == UNKNOWN), "<unk>")
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=spm_merges(pieces), unk_token=unk,
                                 fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")  # after the normalizer: a no-op split
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # Control and user-defined pieces (turn markers, runs of newlines, tabs or spaces) match as whole
    # tokens first, the longest where several fit, as llama.cpp does: 34 spaces are 31 + 3, not the
    # 16 + 18 that BPE merges would make. Gemma 3 270M gives that split the lower loss on every run of
    # 32+ spaces tried (docs/inference.md). Runs of spaces match once the normalizer made them "▁".
    added = [AddedToken(p, special=(t == CONTROL), normalized="▁" in p and not p.strip("▁"))
             for p, t in zip(pieces, types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
    tok.add_tokens(added)
    return tok


def with_bos_template(backend: HFTokenizer, bos_id: int) -> HFTokenizer:
    """A copy of `backend` whose post-processor prepends <bos>, as the tokenizer.json of Gemma's
    own checkpoints does: transformers adds <bos> only through it (`add_bos_token` in
    tokenizer_config.json alone does nothing). codegemma's own encode adds <bos> itself and
    ignores the post-processor, so the copy tokenizes here exactly as the original."""
    from tokenizers.processors import TemplateProcessing

    copy = HFTokenizer.from_str(backend.to_str())
    bos = copy.id_to_token(bos_id)
    copy.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                             special_tokens=[(bos, bos_id)])
    return copy


class Tokenizer:
    """Text <-> token ids for a Gemma vocabulary, with special tokens by name."""

    def __init__(self, backend: HFTokenizer, add_bos: bool = True):
        self.backend = backend
        self.add_bos_default = add_bos
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.special = {name: i for name, text in SPECIAL_NAMES.items() if (i := backend.token_to_id(text)) is not None}
        self.bos_id = self.special.get("bos")
        self.eos_id = self.special.get("eos")
        self.pad_id = self.special.get("pad")
        self._special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}

    # ---- loading -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise CodegemmaError(f"tokenizer file not found: {path}")
        if path.suffix == ".model":
            return cls.from_sentencepiece(path)
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the tokenizers library raises plain Exceptions on bad JSON
            raise CodegemmaError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        directory = Path(directory)
        for name in ("tokenizer.json", "tokenizer.model"):
            if (directory / name).is_file():
                tok = cls.from_file(directory / name)
                config = directory / "tokenizer_config.json"
                if config.is_file():
                    add_bos = read_json(config, dict).get("add_bos_token", True)
                    if add_bos is not None and not isinstance(add_bos, bool):  # bool("false") would be True
                        raise CodegemmaError(f"{config}: add_bos_token must be true or false, not {add_bos!r}")
                    tok.add_bos_default = bool(add_bos)  # null: off, as in transformers
                return tok
        raise CodegemmaError(f"{directory}: no tokenizer.json or tokenizer.model")

    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike) -> "Tokenizer":
        from sentencepiece import sentencepiece_model_pb2 as spm_pb2

        proto = spm_pb2.ModelProto()
        try:
            proto.ParseFromString(Path(path).read_bytes())
        except Exception:
            raise CodegemmaError(f"{path}: not a valid SentencePiece model") from None
        pieces = [p.piece for p in proto.pieces]
        return cls(build_spm_bpe(pieces, [p.type for p in proto.pieces]))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, reader=None) -> "Tokenizer":
        """`reader`: the file's `gguf.GGUFReader` where the caller has one (parsing takes seconds)."""
        from codegemma.checkpoints.gguf_file import read_gguf_tokenizer

        pieces, types, add_bos = read_gguf_tokenizer(path, reader)
        return cls(build_spm_bpe(pieces, types), add_bos=add_bos)

    def save(self, path: str | os.PathLike):
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.backend.save(str(tmp))
        os.replace(tmp, path)

    # ---- use ---------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: list[str], add_bos: bool = False) -> list[list[int]]:
        out = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [[self.bos_id] + ids for ids in out] if add_bos and self.bos_id is not None else out

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids


class StreamDecoder:
    """Incremental detokenization: yields text as soon as it is complete UTF-8.

    Decoding token by token would split multi-byte characters made of byte-fallback tokens, so
    it re-decodes a short window and emits only the stable new part.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(self.ids) already returned

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special=self.skip_special)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more bytes
            return ""
        new = text[self.emitted:]
        self.emitted = len(text)
        return new

    def flush(self) -> str:
        """Whatever is left at the end of generation, incomplete characters included."""
        text = self.tokenizer.decode(self.ids, skip_special=self.skip_special)
        new = text[self.emitted:]
        self.emitted = len(text)
        return new


def rename_tokens(tokenizer: Tokenizer, renames: dict[str, str]) -> Tokenizer:
    """A copy of `tokenizer` whose entries `old` are spelled `new` (same ids).

    Continued pretraining uses this to turn a Gemma checkpoint's unused tokens into the FIM
    sentinels, as CodeGemma did (its sentinels sit where Gemma has unused slots).
    """
    data = json.loads(tokenizer.backend.to_str())
    vocab = data["model"]["vocab"]
    for old, new in renames.items():
        if tokenizer.token_to_id(new) is not None:
            continue  # already there: nothing to turn into it
        token_id = tokenizer.token_to_id(old)
        if token_id is None:
            raise CodegemmaError(f"cannot make {new!r}: the vocabulary has no token {old!r}")
        if isinstance(vocab, dict) and old in vocab:
            vocab[new] = vocab.pop(old)
        elif isinstance(vocab, list):  # Unigram-style [piece, score] lists
            for entry in vocab:
                if entry[0] == old:
                    entry[0] = new
        for added in data.get("added_tokens", []):
            if added["content"] == old:
                added["content"] = new
                added["special"] = False  # CodeGemma's sentinels are ordinary (visible) added tokens
    return Tokenizer(HFTokenizer.from_str(json.dumps(data)), add_bos=tokenizer.add_bos_default)


def with_fim_sentinels(tokenizer: Tokenizer, unused: list[str], where: str = "fim_sentinels_from") -> Tokenizer:
    """`tokenizer` with four of its unused tokens spelled as CodeGemma's FIM sentinels, in the order
    prefix, middle, suffix, file separator (a vocabulary that has them already is returned as it is)."""
    sentinels = CODEGEMMA_SENTINELS.all()
    if len(unused) != len(sentinels):
        raise CodegemmaError(f"{where} needs {len(sentinels)} tokens (prefix, middle, suffix, file separator), "
                             f"got {len(unused)}")
    # A name given twice left one sentinel unmade. A token the text is made of (an ordinary piece, a
    # byte, <bos>, <eos>, the turn markers) would lose its place in the tokenization, and in a
    # model its trained embedding row. Names matter only where their sentinel is still missing.
    repeated = sorted({name for name in unused if unused.count(name) > 1})
    if repeated:
        raise CodegemmaError(f"{where} names {', '.join(repeated)} more than once: each sentinel needs its own token")
    added = set(tokenizer.backend.get_added_tokens_decoder())
    in_use = {SPECIAL_NAMES[name] for name in ("pad", "eos", "bos", "unk", "mask", "start_of_turn", "end_of_turn")}
    for name, sentinel in zip(unused, sentinels):
        token_id = tokenizer.token_to_id(name)
        if tokenizer.token_to_id(sentinel) is not None or token_id is None:
            continue  # nothing to make, or rename_tokens names the missing token
        if name in in_use:
            raise CodegemmaError(f"{where}: {name} (id {token_id}) is a token the model uses, not an unused one")
        if token_id not in added and (tokenizer.encode(name) == [token_id] or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", name)):
            raise CodegemmaError(f"{where}: {name!r} (id {token_id}) is an ordinary piece of text in this vocabulary, "
                                 "not an unused token: name unused ones such as <unused60>")
    return rename_tokens(tokenizer, dict(zip(unused, sentinels)))
