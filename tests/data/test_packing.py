import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codegemma.data.packing import best_fit, chunk, pack


def test_best_fit_fills_the_tightest_bin():
    # 6 goes alone, 4 then fits the bin with 4 left (not a fresh one), 3+3 share the last
    bins = best_fit([6, 4, 3, 3, 4], capacity=10)
    assert sorted(sorted(b) for b in bins) == [[0, 1], [2, 3, 4]]


def test_best_fit_rejects_oversized_items():
    with pytest.raises(ValueError, match="capacity"):
        best_fit([11], capacity=10)


def test_chunk_only_cuts_long_documents():
    assert [len(c) for c in chunk(np.arange(25), 10)] == [10, 10, 5]
    assert [len(c) for c in chunk(np.arange(7), 10)] == [7]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(8, 32))
def test_pack_keeps_every_token_and_marks_boundaries(lengths, seq_len):
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 1000, n).astype(np.int32) for n in lengths]
    rows = list(pack(docs, seq_len, pad_id=0))
    pieces = []
    for tokens, segments, mask in rows:
        assert tokens.shape == segments.shape == mask.shape == (seq_len,)
        assert (mask == (segments > 0)).all()
        assert (tokens[~mask] == 0).all()
        real = segments[mask]
        assert (np.diff(real) >= 0).all() and real[0] == 1  # segments count up from 1, padding at the end
        assert mask[: mask.sum()].all()
        for seg in np.unique(real):
            pieces.append(tuple(tokens[segments == seg]))
    expected = [tuple(c) for d in docs for c in chunk(d, seq_len)]
    assert sorted(pieces) == sorted(expected)
    # best fit never leaves two sequences that could have been merged
    fill = sorted(int(m.sum()) for _, _, m in rows)
    if len(fill) >= 2:
        assert fill[0] + fill[1] > seq_len
