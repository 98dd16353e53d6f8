import sysconfig
from pathlib import Path

import pytest

from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS
from codegemma.tokenizer import Tokenizer
from codegemma.train import tokenizer_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted((stdlib / "json").glob("*.py"))]
    tok = tokenizer_train.train(texts, vocab_size=1024)
    out = tokenizer_train.save(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return tok, out


def test_reserved_ids_match_codegemma(trained):
    tok, _ = trained
    s = CODEGEMMA_SENTINELS
    assert [tok.token_to_id(t) for t in (s.prefix, s.middle, s.suffix, s.file_separator)] == [67, 68, 69, 70]
    assert [tok.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    assert [tok.token_to_id(t) for t in ("<start_of_turn>", "<end_of_turn>")] == [106, 107]
    assert tok.get_vocab_size() == 1024


def test_round_trip_digits_and_byte_fallback(trained):
    tok, _ = trained
    text = "def f(x):\n\treturn x * 12345  # ünïcödé ✓ 🙂\n"
    enc = tok.encode(text)
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    assert [t for t in enc.tokens if t in "12345"] == list("12345")  # digits split one by one
    assert "<0xF0>" in enc.tokens  # the emoji is not in the alphabet: byte fallback
    assert "<unk>" not in enc.tokens


def test_sentinels_encode_as_single_tokens(trained):
    tok, _ = trained
    ids = tok.encode("<|fim_prefix|>a = 1<|fim_suffix|>\n<|fim_middle|>").ids
    assert ids[0] == 67 and 69 in ids and ids[-1] == 68


def test_project_and_transformers_load_it(trained):
    from transformers import AutoTokenizer

    tok, path = trained
    text = "import os\nprint(os.getcwd())\n"
    ours = Tokenizer.from_hf_dir(path.parent)
    assert ours.special["fim_prefix"] == 67 and ours.bos_id == 2 and ours.eos_id == 1
    assert ours.encode(text) == tok.encode(text).ids
    hf = AutoTokenizer.from_pretrained(path.parent)
    assert hf(text)["input_ids"] == ours.encode(text, add_bos=True)  # <bos> first, as codegemma trains
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text).ids
    assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text


def test_too_small_vocabulary_is_an_error():
    with pytest.raises(CodegemmaError, match="too small"):
        tokenizer_train.train(["x"], vocab_size=300)


def test_a_small_vocabulary_has_the_size_asked_for_on_text_of_many_characters():
    """The trainer keeps its whole alphabet past its target size: 300 distinct characters made a
    400-token request come out at 669 tokens."""
    texts = ["".join(chr(0x4E00 + (i * 7 + j) % 300) for j in range(40)) + " x = 1\n" for i in range(200)]
    tok = tokenizer_train.train(texts, vocab_size=400)
    assert tok.get_vocab_size() == 400
    text = texts[3]
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text  # the rest through byte tokens


def test_out_may_name_a_directory(trained, tmp_path):
    """`--out DIR` writes DIR/tokenizer.json (it used to fail naming a temporary file), leaving no
    temporary behind."""
    tok, _ = trained
    out = tokenizer_train.save(tok, tmp_path)
    assert out == tmp_path / "tokenizer.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                          "tokenizer_config.json"]
    text = "def f(x):\n    return x * 2019\n"
    assert Tokenizer.from_file(out).encode(text) == tok.encode(text).ids


def test_vocabulary_too_small_names_the_smallest_that_works():
    """364 ids are fixed: the message used to say only that, and 370 or 380 looked big enough."""
    with pytest.raises(CodegemmaError, match="ask for at least 381"):
        tokenizer_train.train(["x = 1\n"], vocab_size=380)
    assert tokenizer_train.train(["x = 1\n" * 20], vocab_size=381).get_vocab_size() <= 381


@pytest.mark.parametrize("text", ["a\x00b\x00", "x = 1\r\ny = 2\r\n", "\tif x:\n\t\treturn\t# tab\n",
                                  " " * 3000 + "end", "\n" * 500, "😀🙂👍🏽\u200d🚀", "\U0010ffff\ufeff\u2028é"])
def test_any_text_round_trips(trained, text):
    tok, path = trained
    from transformers import PreTrainedTokenizerFast

    enc = tok.encode(text)
    assert "<unk>" not in enc.tokens and tok.decode(enc.ids, skip_special_tokens=True) == text
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert hf(text, add_special_tokens=False)["input_ids"] == enc.ids


def test_a_corpus_without_text_is_an_error(tmp_path, capsys):
    """Empty files used to pass as a corpus: `train tokenizer` wrote the 364 fixed tokens alone
    (asked for 1000) and said it succeeded."""
    from codegemma.cli import main

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.py").write_text("")
    assert main(["train", "tokenizer", str(tmp_path / "corpus"), "--vocab-size", "1000",
                 "--out", str(tmp_path / "tok.json")]) == 1
    assert "no text files to learn a vocabulary from" in capsys.readouterr().err
    assert not (tmp_path / "tok.json").exists()
    with pytest.raises(CodegemmaError, match="no text to learn a vocabulary from"):
        tokenizer_train.train(["", ""], vocab_size=1000)


def test_a_corpus_file_named_on_the_command_line_is_read_whatever_its_size(tmp_path):
    """The size limit skips generated files inside a directory; it used to skip a corpus file named
    directly too, so `train tokenizer corpus.txt` of a few MB said there was no text."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x\n" * 100)
    assert list(tokenizer_train.iter_files(corpus, max_bytes=1000)) == [corpus.read_text()]
    assert list(tokenizer_train.iter_files(tmp_path, max_bytes=1000)) == []  # in a directory: skipped


def test_a_named_file_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café = 1\n".encode("latin-1"))
    with pytest.raises(CodegemmaError, match="latin1.txt: not UTF-8 text"):
        list(tokenizer_train.iter_files(path))
    assert list(tokenizer_train.iter_files(tmp_path)) == []  # one of many in a directory: skipped


def test_extensions_may_leave_out_the_dot(tmp_path):
    """`--ext py` matched nothing (a suffix has its dot) and the corpus looked empty."""
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.txt").write_text("words\n")
    assert list(tokenizer_train.iter_files(tmp_path, ("py",))) == ["x = 1\n"]
    assert list(tokenizer_train.iter_files(tmp_path, (".py",))) == ["x = 1\n"]


def test_out_ending_in_a_slash_is_a_directory_to_make(trained, tmp_path, monkeypatch):
    """`--out tknew/` wrote a file `tknew` and its config files into the working directory."""
    tok, _ = trained
    monkeypatch.chdir(tmp_path)
    assert tokenizer_train.save(tok, "tknew/") == Path("tknew") / "tokenizer.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tknew"]
    assert sorted(p.name for p in (tmp_path / "tknew").iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                                     "tokenizer_config.json"]
