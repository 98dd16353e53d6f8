import json

import numpy as np
import pytest
import torch

from codegemma.data.packing import pack
from codegemma.data.shards import ShardDataset, ShardReader, ShardWriter
from codegemma.errors import CodegemmaError


def _write(path, n_docs=40, seq_len=16, per_shard=7, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, 500, int(rng.integers(1, 30))) for _ in range(n_docs)]
    writer = ShardWriter(path, seq_len, sequences_per_shard=per_shard, meta={"recipe": "test", "vocab_size": 500})
    rows = list(pack(docs, seq_len, pad_id=0))
    for row in rows:
        writer.add(*row)
    writer.close()
    return rows


def test_roundtrip_and_meta(tmp_path):
    rows = _write(tmp_path / "s")
    ds = ShardDataset(tmp_path / "s")
    assert len(ds) == len(rows) and ds.seq_len == 16 and ds.meta["recipe"] == "test"
    assert len(json.loads((tmp_path / "s" / "index.json").read_text())["shards"]) > 1
    for i, (tokens, segments, mask) in enumerate(rows):
        item = ds[i]
        assert item["tokens"].dtype == np.int32 and item["segment_ids"].dtype == np.int32
        assert item["loss_mask"].dtype == bool
        np.testing.assert_array_equal(item["tokens"], tokens)
        np.testing.assert_array_equal(item["segment_ids"], segments)
        np.testing.assert_array_equal(item["loss_mask"], mask)
    assert not list(tmp_path.glob(".*tmp"))  # the staging directory was renamed away
    # readable by others, not a temporary file's or directory's owner-only mode
    assert (tmp_path / "s" / "index.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755


def test_truncated_shard_is_a_clear_error(tmp_path):
    _write(tmp_path / "s")
    victim = next((tmp_path / "s").glob("*.tokens.bin"))
    victim.write_bytes(victim.read_bytes()[:-4])
    with pytest.raises(CodegemmaError, match="truncated"):
        ShardDataset(tmp_path / "s")


def test_reader_ranks_are_disjoint_and_deterministic(tmp_path):
    _write(tmp_path / "s", n_docs=80)
    ds = ShardDataset(tmp_path / "s")

    def seen(rank, world, seed=3):
        reader = ShardReader(ds, batch_size=2, rank=rank, world_size=world, seed=seed)
        rows = []
        for _ in range(reader.batches_per_epoch):
            batch = next(reader)
            assert batch["tokens"].dtype == torch.int64 and batch["tokens"].shape == (2, 16)
            assert batch["loss_mask"].dtype == torch.bool
            rows += [tuple(r.tolist()) for r in batch["tokens"]]
        return rows

    a, b = seen(0, 2), seen(1, 2)
    assert a == seen(0, 2)
    assert a != seen(0, 2, seed=4)
    assert len(a) == len(b)
    index = {tuple(ds[i]["tokens"].tolist()): i for i in range(len(ds))}
    ids_a, ids_b = {index[r] for r in a}, {index[r] for r in b}
    assert not ids_a & ids_b


def test_reader_resumes_exactly(tmp_path):
    _write(tmp_path / "s", n_docs=60)
    full = ShardReader(tmp_path / "s", batch_size=3, seed=1)
    reference = [next(full)["tokens"] for _ in range(full.batches_per_epoch + 4)]  # crosses an epoch
    first = ShardReader(tmp_path / "s", batch_size=3, seed=1)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = ShardReader(tmp_path / "s", batch_size=3, seed=1)
    resumed.load_state_dict(state)
    for expected in reference[5:]:
        assert torch.equal(next(resumed)["tokens"], expected)
    other = ShardReader(tmp_path / "s", batch_size=3, seed=2)
    with pytest.raises(CodegemmaError, match="seed"):
        other.load_state_dict(state)


def test_a_readers_position_carries_over_to_another_split_of_its_steps(tmp_path):
    """Saved by 2 ranks of 3 sequences × 2 accumulated (12 a step; 65 sequences: five steps an epoch,
    5 left over) and resumed by 1 rank of 6 × 2, 3 of 2 × 2, 1 of 12 × 1 or 2 of 2 × 3, every
    optimizer step holds the same sequences, across the epoch boundary too; a split that changes
    the step is refused."""
    _write(tmp_path / "s", n_docs=70)

    def steps(readers, accum, count):
        return [sorted(tuple(r.tolist()) for _ in range(accum) for reader in readers for r in next(reader)["tokens"])
                for _ in range(count)]

    def readers(world, batch, accum):
        return [ShardReader(tmp_path / "s", batch_size=batch, rank=r, world_size=world, seed=1, grad_accum=accum)
                for r in range(world)]

    two = readers(2, 3, 2)
    per_epoch = two[0].batches_per_epoch // 2
    assert per_epoch == len(two[0].dataset) // 12 and len(two[0].dataset) % 12  # some left over each epoch
    count = per_epoch + 3
    reference = steps(two, 2, count)
    saved = readers(2, 3, 2)
    steps(saved, 2, 2)
    for world, batch, accum in ((1, 6, 2), (3, 2, 2), (1, 12, 1), (2, 2, 3)):
        resumed = readers(world, batch, accum)
        for reader in resumed:
            reader.load_state_dict(json.loads(json.dumps(saved[0].state_dict())))
        assert steps(resumed, accum, count - 2) == reference[2:], (world, batch, accum)
    other = ShardReader(tmp_path / "s", batch_size=3, seed=1, grad_accum=2)
    with pytest.raises(CodegemmaError, match=r"saved 2 rank\(s\) × 3 sequences a batch × 2 accumulated, this reader "
                                             r"has 1 × 3 × 2"):
        other.load_state_dict(saved[0].state_dict())


def test_not_a_shard_dir(tmp_path):
    with pytest.raises(CodegemmaError, match="index.json"):
        ShardDataset(tmp_path)


def test_writer_replaces_shards_but_not_other_folders(tmp_path):
    _write(tmp_path / "s")
    _write(tmp_path / "s", n_docs=10)  # an earlier shard directory is rebuilt in place
    assert len(ShardDataset(tmp_path / "s")) < 10
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.py").write_text("x = 1\n")
    with pytest.raises(CodegemmaError, match="is not a shard directory; it is left as it is"):
        ShardWriter(tmp_path / "mine", 16)
    assert (tmp_path / "mine" / "a.py").read_text() == "x = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "s"]


def test_inspect_names_the_range_of_sequences(tmp_path, capsys):
    from codegemma.cli import main

    writer = ShardWriter(tmp_path / "s", 4, meta={"tokenizer": "unused"})
    writer.add([1, 2, 3, 4], [1, 1, 1, 1], [1, 1, 1, 1])
    writer.close()
    assert main(["data", "inspect", str(tmp_path / "s"), "--decode", "5"]) == 1
    assert "--decode 5: " in (err := capsys.readouterr().err) and "holds sequences 0..0" in err


def test_a_full_disk_is_one_error_naming_the_shard_directory(tmp_path):
    """numpy's short write says only "N requested and M written"; the staging folder goes too."""
    import resource

    writer = ShardWriter(tmp_path / "train", seq_len=512, sequences_per_shard=4)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # a file may not grow past 1 KB: a full disk
    try:
        with pytest.raises(CodegemmaError, match="cannot write .*train: [0-9]+ requested and [0-9]+ written"):
            for _ in range(4):
                writer.add(np.ones(512), np.ones(512), np.ones(512))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []
