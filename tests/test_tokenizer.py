"""The tokenizer against SentencePiece itself (a Gemma-style BPE model trained here) and its file formats."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from codegemma.errors import CodegemmaError
from codegemma.tokenizer import StreamDecoder, Tokenizer

spm = pytest.importorskip("sentencepiece")

TEXTS = [
    "",
    "def f(x):\n\treturn  x + 1\n",
    "a = 1\r\nb = 2\r\n",
    "    indented    with   runs   of spaces    ",
    "naïve café 日本語 🙂",
    "0123456789 + 3.14",
    inspect.getsource(textwrap)[:3000],
]


@pytest.fixture(scope="module")
def gemma_style_spm(tmp_path_factory):
    """A SentencePiece BPE model with Gemma's settings: byte fallback, digits split, no dummy prefix,
    whitespace kept as is."""
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    corpus.write_text(inspect.getsource(inspect) + inspect.getsource(textwrap))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tok"), model_type="bpe", vocab_size=500,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_by_whitespace=False,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        character_coverage=1.0, max_sentencepiece_length=16, minloglevel=2)
    return directory / "tok.model"


def test_sentencepiece_model_agrees_with_sentencepiece(gemma_style_spm):
    ours = Tokenizer.from_file(gemma_style_spm)
    ref = spm.SentencePieceProcessor(model_file=str(gemma_style_spm))
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text[:40]
        assert ours.decode(ours.encode(text)) == text


def test_special_tokens_by_name_and_bos(gemma_style_spm):
    tok = Tokenizer.from_file(gemma_style_spm)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.special["start_of_turn"] == tok.token_to_id("<start_of_turn>")
    assert tok.encode("hi", add_bos=True)[0] == 2 and tok.encode("hi")[0] != 2
    assert "fim_prefix" not in tok.special


def test_tokenizer_json_round_trip(gemma_style_spm, tmp_path):
    tok = Tokenizer.from_file(gemma_style_spm)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_hf_dir(tmp_path)
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)


def test_stream_decoder_holds_back_partial_characters(gemma_style_spm):
    tok = Tokenizer.from_file(gemma_style_spm)
    text = "naïve 🙂 café"
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in tok.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(CodegemmaError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CodegemmaError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "bad.model").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CodegemmaError, match="not a valid SentencePiece model"):
        Tokenizer.from_file(tmp_path / "bad.model")
    with pytest.raises(CodegemmaError, match="no tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path / "nowhere")


def test_tokenizer_config_is_read_strictly(gemma_style_spm, tmp_path):
    Tokenizer.from_file(gemma_style_spm).save(tmp_path / "tokenizer.json")
    config = tmp_path / "tokenizer_config.json"
    config.write_text('{"add_bos_token": false}')
    assert Tokenizer.from_hf_dir(tmp_path).add_bos_default is False
    config.write_text('{"add_bos_token": "false"}')  # bool("false") was True
    with pytest.raises(CodegemmaError, match="add_bos_token must be true or false, not 'false'"):
        Tokenizer.from_hf_dir(tmp_path)
    config.write_text("{bad")
    with pytest.raises(CodegemmaError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_hf_dir(tmp_path)
