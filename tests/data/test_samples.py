import random

from hypothesis import given, settings, strategies as st

import pytest

from codegemma.data.samples import FimConfig, SampleEncoder, line_chunks, repository_pieces, sample_rng
from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS, undo_fim
from codegemma.tokenizer import Tokenizer

paths = st.from_regex(r"[a-z]{1,8}(/[a-z_]{1,8}){0,2}\.py", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(paths, texts), min_size=1, max_size=5), st.integers(0, 2**32), st.floats(0, 1))
def test_undoing_fim_gives_back_every_file(files, seed, rate):
    pieces = repository_pieces(files, random.Random(seed), FimConfig(rate=rate))
    for (path, text), file_pieces in zip(files, pieces):
        got_path, got_text = undo_fim(file_pieces)
        if got_path is None:  # not transformed: the path line is part of the text
            assert got_text == f"{path}\n{text}"
        else:
            assert (got_path, got_text) == (path, text)
            # the path line is never split: it is one whole piece before the prefix sentinel
            assert file_pieces[0] == path + "\n" and file_pieces[1] == CODEGEMMA_SENTINELS.prefix


@settings(max_examples=80, deadline=None)
@given(texts, st.integers(1, 60))
def test_line_chunks_cut_at_line_ends_and_keep_everything(text, max_chars):
    chunks = line_chunks(text, max_chars)
    assert "".join(chunks) == text
    assert all(chunks) or chunks == [""]
    for chunk in chunks[:-1]:  # every cut is at a line end
        assert chunk.splitlines(keepends=True)[-1] != chunk.splitlines()[-1]
    for chunk in chunks:  # only a single line may exceed the limit
        assert len(chunk) <= max_chars or len(chunk.splitlines(keepends=True)) == 1


def documents_of(pieces: list[str]) -> list[list[str]]:
    """One file's pieces split at <|file_separator|> into the documents a model sees."""
    documents, current = [], []
    for piece in pieces + [CODEGEMMA_SENTINELS.file_separator]:
        if piece == CODEGEMMA_SENTINELS.file_separator:
            documents.append(current)
            current = []
        else:
            current.append(piece)
    return documents


def test_chunked_fim_makes_each_piece_of_a_long_file_a_candidate():
    text = "".join(f"value_{i} = {i}\n" for i in range(300))  # ~4.5k characters
    [pieces] = repository_pieces([("big.py", text)], random.Random(0), FimConfig(rate=1.0, chunk_chars=500))
    chunks = documents_of(pieces)
    assert len(chunks) == len(line_chunks(text, 500)) >= 9
    restored = [undo_fim(c) for c in chunks]
    assert all(path == "big.py" for path, _ in restored)  # every chunk carries the path line
    assert "".join(part for _, part in restored) == text
    assert repository_pieces([("big.py", text)], random.Random(0), FimConfig(rate=1.0)) != [pieces]
    with pytest.raises(CodegemmaError):
        FimConfig(chunk_chars=-1)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_chunks_left_plain_run_on_as_the_files_text(rate):
    """A file separator and a fresh path line only around FIM chunks: without FIM a chunked file is
    the whole file, and no two plain documents of one file are next to each other."""
    text = "".join(f"value_{i} = {i}\n" for i in range(300))
    [pieces] = repository_pieces([("big.py", text)], random.Random(0), FimConfig(rate=rate, chunk_chars=500))
    documents = documents_of(pieces)
    kinds = [CODEGEMMA_SENTINELS.prefix in d for d in documents]
    assert not any(a is b is False for a, b in zip(kinds, kinds[1:]))
    restored = [undo_fim(d) for d in documents]
    assert "".join(part if path else part.removeprefix("big.py\n") for path, part in restored) == text
    if rate == 0.0:
        assert pieces == [f"big.py\n{text}"]
    else:
        assert 0 < sum(kinds) < len(line_chunks(text, 500)) and not all(kinds)


def test_suffix_line_rate_reaches_every_fim_example_of_a_repository():
    text = "".join(f"value_{i} = {i}\n" for i in range(40))
    files = [(f"m{i}.py", text) for i in range(30)]
    pieces = repository_pieces(files, random.Random(0), FimConfig(rate=1.0, suffix_line_rate=1.0))
    S = CODEGEMMA_SENTINELS
    for file_pieces in pieces:
        suffix = file_pieces[file_pieces.index(S.suffix) + 1]  # PSM and SPM alike
        if suffix not in (S.middle, ""):
            assert text.endswith(suffix) and (len(suffix) == len(text) or text[-len(suffix) - 1] == "\n")


def test_single_line_rate_reaches_every_fim_example_of_a_repository():
    text = "".join(f"value_{i} = {i}\n" for i in range(40))
    files = [(f"m{i}.py", text) for i in range(30)]
    pieces = repository_pieces(files, random.Random(0), FimConfig(rate=1.0, spm_rate=0.0, single_line_rate=1.0))
    S = CODEGEMMA_SENTINELS
    middles = set()
    for file_pieces in pieces:  # PSM: path, <|fim_prefix|>, prefix, <|fim_suffix|>, suffix, <|fim_middle|>, middle
        prefix = file_pieces[file_pieces.index(S.prefix) + 1]
        prefix = "" if prefix == S.suffix else prefix  # an empty prefix has no piece of its own
        middle = file_pieces[-1]
        assert file_pieces[-2] == S.middle and undo_fim(file_pieces)[1] == text
        assert middle.count("\n") == 1 and middle.startswith("value_") and text.startswith(prefix + middle)
        middles.add(middle)
    assert len(middles) > 15


def test_fim_rate_and_psm_spm_balance():
    files = [(f"f{i}.py", "x = 1\n" * 20) for i in range(2000)]
    pieces = repository_pieces(files, random.Random(0), FimConfig(rate=0.8))
    fim = [p for p in pieces if CODEGEMMA_SENTINELS.prefix in p]
    spm = [p for p in fim if p[p.index(CODEGEMMA_SENTINELS.prefix) + 1] == CODEGEMMA_SENTINELS.suffix]
    assert abs(len(fim) / len(files) - 0.8) < 0.03
    assert abs(len(spm) / len(fim) - 0.5) < 0.04


def test_sample_rng_depends_on_seed_and_key_only():
    assert sample_rng(0, "a").random() == sample_rng(0, "a").random()
    assert sample_rng(0, "a").random() != sample_rng(1, "a").random()


def test_repository_sample_layout_and_split(tokenizer_path):
    enc = SampleEncoder(Tokenizer.from_file(tokenizer_path))
    files = [enc.encode_file([f"m{i}.py\nx = {i}\n"]) for i in range(6)]
    whole = enc.repository(files, seq_len=10_000)
    assert len(whole) == 1
    ids = whole[0].tolist()
    assert ids[0] == enc.bos_id and ids[-1] == enc.eos_id and ids.count(enc.file_separator) == 5
    parts = enc.repository(files, seq_len=sum(len(f) for f in files[:3]) + 4)
    assert len(parts) >= 2 and all(p[0] == enc.bos_id and p[-1] == enc.eos_id for p in parts)
    assert sum(len(p) for p in parts) == len(ids) + 2 * (len(parts) - 1) - (len(parts) - 1)
    # a sentinel spelled in a file stays text
    literal = enc.encode_file(["print('<|fim_prefix|>')"])
    assert enc.ids[CODEGEMMA_SENTINELS.prefix] not in literal
