"""Train a BPE tokenizer for from-scratch models, laid out like the CodeGemma vocabulary.

The reserved ids follow Gemma 1 / CodeGemma so prompts, profiles and stop ids work unchanged:
0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <mask>, the FIM sentinels at 67-70, <start_of_turn> and
<end_of_turn> at 106/107, and <unusedN> fillers in between. Then come the 256 byte-fallback tokens
<0x00>..<0xFF>, so any text encodes, and the learned merges.

Like Gemma's SentencePiece model, spaces are written as "▁" and inference is plain BPE over the
whole text (no pre-tokenizer), so the vocabulary exports to a GGUF SentencePiece ("llama")
vocabulary that encodes the same way. Training alone splits the text into words, single digits,
punctuation runs and whitespace runs; that is what keeps digits split and merges inside words.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from codegemma.data.atomic import file_target, write_text
from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS
from codegemma.tokenizer import with_bos_template

SPECIAL_BY_ID = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
                 67: CODEGEMMA_SENTINELS.prefix, 68: CODEGEMMA_SENTINELS.middle,
                 69: CODEGEMMA_SENTINELS.suffix, 70: CODEGEMMA_SENTINELS.file_separator,
                 106: "<start_of_turn>", 107: "<end_of_turn>"}
_VISIBLE = frozenset(CODEGEMMA_SENTINELS.all())
N_RESERVED = 108
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
# A word with its leading space, one digit, a punctuation run, or whitespace (a newline run on its own).
_SPLIT = r"▁?[\p{L}\p{M}_]+|▁?[^\s▁\p{L}\p{M}\p{N}_]+|\p{N}|▁+|\s+"


def reserved_tokens() -> list[str]:
    unused = iter(range(N_RESERVED))
    return [SPECIAL_BY_ID.get(i) or f"<unused{next(unused)}>" for i in range(N_RESERVED)]


def build_untrained() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, max_alphabet: int = 512) -> Tokenizer:
    """Learn merges from `texts`; the result has exactly the reserved and byte tokens at fixed ids."""
    reserved = reserved_tokens()
    n_fixed = len(reserved) + len(BYTE_TOKENS)
    if vocab_size <= n_fixed + 16:
        raise CodegemmaError(f"vocab_size {vocab_size} is too small: {len(reserved)} reserved and "
                             f"{len(BYTE_TOKENS)} byte tokens take {n_fixed} ids; ask for at least {n_fixed + 17}")
    learner = build_untrained()
    seen = {"chars": 0}

    def counted(texts):
        for text in texts:
            seen["chars"] += len(text)
            yield text
    # The trainer keeps its whole alphabet even past its vocab_size; characters left out of a small
    # vocabulary are still encoded, through the byte tokens.
    alphabet = min(max_alphabet, vocab_size - n_fixed)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(BYTE_TOKENS), min_frequency=min_frequency,
                                  special_tokens=reserved, limit_alphabet=alphabet, show_progress=False)
    learner.train_from_iterator(counted(texts), trainer=trainer)
    if not seen["chars"]:  # the result would be the reserved and byte tokens alone, far short of vocab_size
        raise CodegemmaError("no text to learn a vocabulary from (the corpus is empty)")
    model = json.loads(learner.to_str())["model"]
    # Re-number: reserved, then the byte tokens as ordinary vocabulary (ByteFallback only decodes
    # non-special tokens), then the learned pieces in the order the trainer found them.
    vocab = {name: i for i, name in enumerate(reserved + BYTE_TOKENS)}
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = learner.normalizer
    tok.decoder = learner.decoder
    # CodeGemma marks its FIM sentinels non-special (they stay visible when decoding, so a client
    # can see and cut them); control tokens are special.
    tok.add_special_tokens([AddedToken(t, special=t not in _VISIBLE) for t in reserved if t not in _VISIBLE])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in reserved if t in _VISIBLE])
    for i, name in enumerate(reserved + BYTE_TOKENS):
        if tok.token_to_id(name) != i:
            raise AssertionError(f"{name} landed at id {tok.token_to_id(name)}, expected {i}")
    return tok


def iter_files(root: str | Path, extensions: tuple[str, ...] = (), max_bytes: int = 1_000_000) -> Iterator[str]:
    """Texts of the files under `root` (or `root` itself), skipping binary, empty and huge files.
    A file named as `root` is read whatever its size, and one that is not UTF-8 text is an error:
    it was asked for, so leaving it out silently would train on less than the user thinks."""
    root = Path(root)
    if not root.exists():
        raise CodegemmaError(f"tokenizer corpus not found: {root}")
    # "py" and ".py" both mean Python files (Path.suffix has the dot)
    extensions = tuple(e if e.startswith(".") else f".{e}" for e in extensions)
    if root.is_file():
        if extensions and root.suffix not in extensions:
            return
        try:
            text = root.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CodegemmaError(f"{root}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if text:
            yield text
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if extensions and path.suffix not in extensions:
            continue
        try:
            if path.stat().st_size > max_bytes:  # generated or data files, in a source tree
                continue
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text:  # an empty file adds nothing, and must not count as a corpus
            yield text


def target(out_path: str | Path) -> Path:
    """The tokenizer file `out_path` names: itself, or tokenizer.json in a directory (an existing one,
    or a name ending in a slash); checked, so a caller can refuse a bad one before training."""
    if Path(out_path).is_dir() or os.fspath(out_path).endswith(("/", os.sep)):
        out_path = Path(out_path) / "tokenizer.json"
    return file_target(out_path, "tokenizer file")


def save(tok: Tokenizer, out_path: str | Path) -> Path:
    """Write tokenizer.json (atomically) plus the HF config files so transformers loads the directory.
    `out_path` names the tokenizer file, or a directory to write tokenizer.json into (see `target`)."""
    out_path = target(out_path)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": True,
              "model_max_length": 1 << 30}
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")}
    hf_json = with_bos_template(tok, tok.token_to_id("<bos>")).to_str(pretty=True)
    for name, text in ((out_path.name, hf_json), ("tokenizer_config.json", json.dumps(config, indent=1)),
                       ("special_tokens_map.json", json.dumps(special_map, indent=1))):
        write_text(out_dir / name, text)
    return out_path
