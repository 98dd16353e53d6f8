"""Token shards: fixed-length sequences in memory-mapped arrays with a JSON index.

On disk, a shard directory holds `index.json` and, per shard `k`, three raw little-endian arrays of
shape [n_k, seq_len]: `shard-k.tokens.bin` (int32 ids), `shard-k.segments.bin` (int32: 1, 2, 3, ...
per document inside the sequence, 0 for padding) and `shard-k.loss.bin` (uint8 loss mask). The whole
directory is written under a temporary name and renamed into place when complete.

`ShardDataset` gives random access to sequences; `ShardReader` is the trainer's iterator: batches of
torch tensors, deterministic for a seed, a disjoint slice per rank, resumable at the next batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from codegemma.data.atomic import check_replaceable, publish_dir, staging_dir, write_json
from codegemma.errors import CodegemmaError

FORMAT = "codegemma-shards"
VERSION = 1
_ARRAYS = (("tokens", "tokens", np.int32), ("segment_ids", "segments", np.int32), ("loss_mask", "loss", np.uint8))


def is_shard_dir(directory: Path) -> bool:
    return (Path(directory) / "index.json").is_file()


class ShardWriter:
    """Collects sequences and writes a complete shard directory on `close()` (nothing before)."""

    def __init__(self, path: str | os.PathLike, seq_len: int, sequences_per_shard: int = 4096, meta: dict | None = None):
        if seq_len < 2:
            raise CodegemmaError(f"seq_len must be at least 2, got {seq_len}")
        self.path = Path(path)
        check_replaceable(self.path, is_shard_dir, "a shard directory")
        self.seq_len = seq_len
        self.sequences_per_shard = sequences_per_shard
        self.meta = dict(meta or {})
        self._stage = staging_dir(self.path)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._shards: list[dict] = []
        self._count = 0

    def add(self, tokens, segment_ids, loss_mask) -> None:
        row = (np.asarray(tokens, np.int32), np.asarray(segment_ids, np.int32), np.asarray(loss_mask, np.uint8))
        if any(a.shape != (self.seq_len,) for a in row):
            raise ValueError(f"sequence arrays must have shape ({self.seq_len},), got {[a.shape for a in row]}")
        self._pending.append(row)
        if len(self._pending) >= self.sequences_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard-{len(self._shards):05d}"
        try:
            for i, (_, suffix, dtype) in enumerate(_ARRAYS):
                block = np.stack([row[i] for row in self._pending]).astype(dtype)
                block.astype(block.dtype.newbyteorder("<")).tofile(self._stage / f"{name}.{suffix}.bin")
        except OSError as exc:
            self._failed(exc)
        self._shards.append({"name": name, "num_sequences": len(self._pending)})
        self._count += len(self._pending)
        self._pending = []

    def close(self) -> Path:
        self._flush()
        try:
            write_json(self._stage / "index.json", {
                "format": FORMAT, "version": VERSION, "seq_len": self.seq_len,
                "num_sequences": self._count, "shards": self._shards, "meta": self.meta,
            })
        except OSError as exc:
            self._failed(exc)
        publish_dir(self._stage, self.path)
        return self.path

    def _failed(self, exc: OSError):
        """A full disk, say: numpy's short write names no file, and others name the staging folder."""
        self.abort()
        raise CodegemmaError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self._stage, ignore_errors=True)


class ShardDataset:
    """Random access to the sequences of a shard directory; arrays are memory-mapped, not loaded."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise CodegemmaError(f"{self.path}: not a shard directory (no index.json)")
        raw = index_path.read_bytes()
        try:
            index = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CodegemmaError(f"{index_path}: invalid JSON ({exc})") from None
        self._index_bytes, self._fingerprint = raw, None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CodegemmaError(f"{index_path}: not a {FORMAT} v{VERSION} index")
        self.seq_len: int = index["seq_len"]
        self.meta: dict = index.get("meta", {})
        self._arrays: list[dict[str, np.ndarray]] = []
        starts = [0]
        for shard in index["shards"]:
            n = shard["num_sequences"]
            arrays = {}
            for key, suffix, dtype in _ARRAYS:
                file = self.path / f"{shard['name']}.{suffix}.bin"
                expected = n * self.seq_len * np.dtype(dtype).itemsize
                if not file.is_file() or file.stat().st_size != expected:
                    raise CodegemmaError(f"{file}: missing or truncated (expected {expected} bytes)")
                arrays[key] = np.memmap(file, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(n, self.seq_len))
            self._arrays.append(arrays)
            starts.append(starts[-1] + n)
        self._starts = np.asarray(starts)
        if starts[-1] != index["num_sequences"]:
            raise CodegemmaError(f"{index_path}: shards hold {starts[-1]} sequences, index says {index['num_sequences']}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def fingerprint(self) -> str:
        """Which sequences these are, wherever the directory was moved: the index and the tokens of
        the first, middle and last row of every shard (reading all of them would take minutes)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self._index_bytes)
            for arrays in self._arrays:
                tokens = arrays["tokens"]
                for row in sorted({0, len(tokens) // 2, len(tokens) - 1}):
                    digest.update(np.ascontiguousarray(tokens[row]).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        i %= n
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        arrays = self._arrays[shard]
        row = i - self._starts[shard]
        return {
            "tokens": np.asarray(arrays["tokens"][row], dtype=np.int32),
            "segment_ids": np.asarray(arrays["segment_ids"][row], dtype=np.int32),
            "loss_mask": np.asarray(arrays["loss_mask"][row]).astype(bool),
        }

    def batch(self, indices) -> dict[str, np.ndarray]:
        rows = [self[int(i)] for i in indices]
        return {key: np.stack([r[key] for r in rows]) for key in ("tokens", "segment_ids", "loss_mask")}


class ShardReader:
    """Batches for one rank: [batch_size, seq_len] torch tensors, looping over epochs.

    Every epoch draws one permutation of all sequences from (seed, epoch), identical on every rank;
    rank r takes positions r, r + world_size, ... of it. An optimizer step takes `grad_accum`
    batches on every rank, and an epoch ends with its last whole step: the sequences left over,
    fewer than one step's, wait for a later epoch's draw.

    So the k-th batches of all ranks together are positions [k·B, (k+1)·B) of the permutation, B =
    world_size × batch_size, the j-th optimizer step positions [j·G, (j+1)·G), G = B × grad_accum,
    and an epoch holds ⌊n / G⌋ steps: the same sequences in the same steps for any split of G into
    processes, batch size and accumulation. A reader's position therefore carries over to another
    split that keeps G (`load_state_dict`).
    """

    def __init__(self, path: str | os.PathLike | ShardDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, grad_accum: int = 1):
        self.dataset = path if isinstance(path, ShardDataset) else ShardDataset(path)
        if world_size < 1 or not 0 <= rank < world_size:
            raise CodegemmaError(f"rank {rank} is not in a world of size {world_size}")
        self.batch_size, self.rank, self.world_size, self.grad_accum = batch_size, rank, world_size, grad_accum
        self.seed, self.shuffle = seed, shuffle
        steps = len(self.dataset) // (world_size * batch_size * grad_accum)
        if steps == 0:
            accumulated = f" × {grad_accum} accumulated" if grad_accum > 1 else ""
            raise CodegemmaError(
                f"{self.dataset.path}: {len(self.dataset)} sequences cannot fill one batch of {batch_size}"
                f"{accumulated} on each of {world_size} ranks")
        self.batches_per_epoch = steps * grad_accum
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order: np.ndarray | None = None

    @property
    def seq_len(self) -> int:
        return self.dataset.seq_len

    def _rank_order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[self.rank::self.world_size][: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        import torch

        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._order = None
        if self._order is None:
            self._order = self._rank_order(self.epoch)
        start = self.batch_in_epoch * self.batch_size
        batch = self.dataset.batch(self._order[start: start + self.batch_size])
        self.batch_in_epoch += 1
        return {
            "tokens": torch.from_numpy(batch["tokens"].astype(np.int64)),
            "segment_ids": torch.from_numpy(batch["segment_ids"].astype(np.int64)),
            "loss_mask": torch.from_numpy(batch["loss_mask"]),
        }

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "batch_size": self.batch_size,
                "grad_accum": self.grad_accum,
                "num_sequences": len(self.dataset), "shuffle": self.shuffle, "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint", self.dataset.fingerprint()) != self.dataset.fingerprint():  # older: unrecorded
            # as many sequences of other data would pass every other check, and the position go on in them
            raise CodegemmaError(f"cannot resume data reader: {self.dataset.path} holds other sequences than the "
                                 "ones it was saved with; resume with the data the run started with")
        for key in ("seed", "num_sequences", "shuffle"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise CodegemmaError(f"cannot resume data reader: saved {key}={state[key]!r}, this reader has {mine!r}")
        world, batch = state.get("world_size", self.world_size), state.get("batch_size", self.batch_size)
        accum = state.get("grad_accum", self.grad_accum)  # older states: unrecorded, so the same
        if world * batch * accum != self.world_size * self.batch_size * self.grad_accum:
            raise CodegemmaError(
                f"cannot resume data reader: saved {world} rank(s) × {batch} sequences a batch × {accum} accumulated, "
                f"this reader has {self.world_size} × {self.batch_size} × {self.grad_accum}: the optimizer steps "
                "would hold other sequences")
        # the position in sequences of the epoch's permutation, taken in this reader's batches
        taken, mine = int(state["batch_in_epoch"]) * world * batch, self.world_size * self.batch_size
        if taken % mine:
            raise CodegemmaError(f"cannot resume data reader: saved within an optimizer step, after {taken} "
                                 f"sequences of an epoch, which batches of {mine} cannot continue")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = taken // mine
        self._order = None
