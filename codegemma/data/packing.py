"""Best-fit packing of documents into fixed-length sequences (Ding et al. 2024, "Fewer truncations").

Only documents longer than the sequence length are cut (into sequence-length chunks); the pieces are
then placed by best-fit decreasing: longest first, each into the open sequence with the least room
that still holds it. Document boundaries are kept as segment ids so attention can be masked per
document, and padding is masked out of the loss.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator, Sequence

import numpy as np


def chunk(doc: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """A document as pieces of at most seq_len tokens (one piece when it already fits)."""
    return [doc[i: i + seq_len] for i in range(0, len(doc), seq_len)] or []


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) from best-fit decreasing; deterministic for equal lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} has length {size} > capacity {capacity}; chunk it first")
        pos = bisect.bisect_left(room, (size, -1))
        if pos < len(room):
            left, b = room.pop(pos)
            bins[b].append(i)
            bisect.insort(room, (left - size, b))
        else:
            bins.append([i])
            bisect.insort(room, (capacity - size, len(bins) - 1))
    return bins


def pack(docs: Iterable[np.ndarray], seq_len: int, pad_id: int, window: int = 50_000
         ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(tokens, segment_ids, loss_mask) rows of length seq_len.

    Documents are packed in windows of `window` pieces so memory stays bounded on large corpora;
    within a window the packing is best-fit decreasing.
    """
    buffer: list[np.ndarray] = []
    for doc in docs:
        buffer += chunk(np.asarray(doc, dtype=np.int32), seq_len)
        if len(buffer) >= window:
            yield from _pack_window(buffer, seq_len, pad_id)
            buffer = []
    if buffer:
        yield from _pack_window(buffer, seq_len, pad_id)


def _pack_window(pieces: list[np.ndarray], seq_len: int, pad_id: int):
    for members in best_fit([len(p) for p in pieces], seq_len):
        tokens = np.full(seq_len, pad_id, dtype=np.int32)
        segments = np.zeros(seq_len, dtype=np.int32)
        at = 0
        for seg, i in enumerate(sorted(members), start=1):  # original order inside a sequence
            n = len(pieces[i])
            tokens[at: at + n] = pieces[i]
            segments[at: at + n] = seg
            at += n
        yield tokens, segments, segments > 0
