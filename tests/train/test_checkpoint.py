"""Atomic checkpoint writes: a failed write leaves the old file and no temporary file behind."""

import os

import pytest
import torch

from codegemma.train import checkpoint


def _fail(*args, **kwargs):
    raise OSError("disk full")


@pytest.mark.parametrize("failing", ["fsync", "replace"])  # during the write / at the rename
@pytest.mark.parametrize("writer", ["text", "torch"])
def test_failed_atomic_write_keeps_target_and_removes_temporary(tmp_path, monkeypatch, writer, failing):
    target = tmp_path / "latest"
    if writer == "text":
        target.write_text("step_00000001.pt\n")
        write = lambda: checkpoint._atomic_text("step_00000002.pt\n", target)  # noqa: E731
    else:
        torch.save({"step": 1}, target)
        write = lambda: checkpoint._atomic_torch_save({"step": 2}, target)  # noqa: E731
    before = target.read_bytes()
    monkeypatch.setattr(os, failing, _fail)
    with pytest.raises(OSError, match="disk full"):
        write()
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no .latest.*.tmp left beside it


def test_atomic_text_replaces_target(tmp_path):
    target = tmp_path / "latest"
    target.write_text("old\n")
    checkpoint._atomic_text("new\n", target)
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_checkpoints_past_99_999_999_steps_are_listed_and_pruned(tmp_path):
    """From step 100,000,000 the name has 9 digits; it must still count as a checkpoint, or `latest`
    without its pointer would go back to step 99,999,999 and `keep` would never prune it."""
    for step in (99_999_999, 100_000_000, 100_000_001):
        checkpoint.save(tmp_path, step, {"step": step}, keep=2)
    assert checkpoint.list_steps(tmp_path) == [100_000_000, 100_000_001]
    (tmp_path / "latest").unlink()
    assert checkpoint.latest(tmp_path).name == "step_100000001.pt"


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    """A run continued from an earlier checkpoint than its newest (`latest` pointed back by hand after
    a loss spike) saves steps below the old newest one: with keep = 1, pruning by step order deleted
    the file just written, leaving `latest` naming nothing and the abandoned step 10 as the fallback."""
    for step in (5, 10):
        checkpoint.save(tmp_path, step, {"step": step}, keep=0)
    (tmp_path / "latest").write_text("step_00000005.pt\n")
    path = checkpoint.save(tmp_path, 8, {"step": 8}, keep=1)
    assert path.is_file() and checkpoint.latest(tmp_path) == path
    assert checkpoint.list_steps(tmp_path) == [8, 10]  # 5 pruned; the later step 10 left alone
    checkpoint.save(tmp_path, 9, {"step": 9}, keep=2)
    assert checkpoint.list_steps(tmp_path) == [8, 9, 10]


def test_a_save_removes_what_killed_saves_left(tmp_path):
    """A save killed before its rename (SIGKILL, a second SIGTERM) leaves a checkpoint-sized temporary
    file; a preemptible job would pile one up per preemption. The next save removes them."""
    checkpoint.save(tmp_path, 1, {"step": 1})
    dead = [tmp_path / ".step_00000002.pt.k3j9x.tmp", tmp_path / ".latest.a8b2c.tmp"]
    for p in dead:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.txt").write_text("mine")
    checkpoint.save(tmp_path, 2, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "notes.txt", "step_00000001.pt",
                                                          "step_00000002.pt"]


def test_a_truncated_checkpoint_is_one_line_naming_the_way_back(tmp_path):
    from codegemma.errors import CodegemmaError

    for step in (4, 8):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.zeros(1000)})
    path = tmp_path / "step_00000008.pt"
    path.write_bytes(path.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(CodegemmaError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: not a readable training checkpoint (")
    assert message.endswith("remove it to continue from step_00000004.pt")
    path.unlink()
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"] == 4


def _sharded(tmp_path, step, keep=2, size=1000):
    from codegemma.train.distributed import DistEnv

    tensors = {"model": {"w": torch.full((size,), float(step))}, "optimizer": {"state": {"w": {"m": torch.ones(3)}}}}
    return checkpoint.save_sharded(tmp_path, step, tensors, {"step": step}, DistEnv(), keep=keep)


def test_sharded_checkpoints_are_published_pruned_and_read_whole(tmp_path):
    """A sharded checkpoint is a directory that appears whole (renamed from a temporary one, which
    a later save removes if a killed save left it), `latest` names it, `keep` prunes the old ones, and
    one process reads its weights whole: the state without the optimizer's, which only a resuming
    run reads, process by process."""
    _sharded(tmp_path, 1)
    (tmp_path / ".step_00000002.sharded.tmp").mkdir()
    (tmp_path / ".step_00000002.sharded.tmp" / "__0_0.distcp").write_bytes(b"half a shard")
    for step in (2, 3):
        path = _sharded(tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert checkpoint.latest(tmp_path) == path and checkpoint.is_sharded(path)
    state = checkpoint.load(path)
    assert state["step"] == 3 and "optimizer" not in state
    assert torch.equal(state["model"]["w"], torch.full((1000,), 3.0))
    checkpoint.save(tmp_path, 3, {"step": 3})  # the same step again, as a file: it replaces the directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000002", "step_00000003.pt"]
    assert checkpoint.latest(tmp_path).name == "step_00000003.pt"


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
@pytest.mark.parametrize("form", ["file", "sharded"])
def test_a_full_disk_during_a_save_is_one_line_naming_the_checkpoint(tmp_path, form):
    """torch.save turns the failed write into `RuntimeError: unexpected pos ...` (a traceback that says
    nothing of the disk), and a sharded save into a CheckpointException with every process's
    traceback; the run stops with one line naming the checkpoint, the reason and the intact one
    before it, and leaves no temporary file or directory."""
    import resource

    from codegemma.errors import CodegemmaError

    def save(step, size):
        if form == "file":
            return checkpoint.save(tmp_path, step, {"model": torch.zeros(size)})
        return _sharded(tmp_path, step, size=size)

    first = save(1, 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # writes past 1 MB fail with EFBIG, as on a full disk
    try:
        with pytest.raises(CodegemmaError) as err:
            save(2, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(err.value)
    second = first.name.replace("00000001", "00000002")
    assert "\n" not in message and f"{second}: cannot write the checkpoint (File too large)" in message
    assert message.endswith(f"the newest complete checkpoint is still {first}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", first.name]
    assert checkpoint.latest(tmp_path) == first


def test_a_damaged_sharded_checkpoint_is_one_line(tmp_path):
    from codegemma.errors import CodegemmaError

    path = _sharded(tmp_path, 1)
    shard = path / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CodegemmaError) as err:
        checkpoint.load(path)
    assert str(err.value) == (f"{path}: not a readable sharded checkpoint (PytorchStreamReader failed reading zip "
                              "archive: failed finding central directory)")
    shard.unlink()
    with pytest.raises(CodegemmaError) as err:
        checkpoint.load(path)
    assert str(err.value) == f"{path}: not a readable sharded checkpoint ([Errno 2] No such file or directory: '{shard}')"


def _tiny_recipe(tmp_path, steps=4, extra=""):
    from codegemma.train import recipe as recipe_mod

    from .conftest import recipe_toml, write_shards

    shards = write_shards(tmp_path / "shards", n=16)
    (tmp_path / "r.toml").write_text(recipe_toml(tmp_path / "run", shards, steps, extra))
    return recipe_mod.load(tmp_path / "r.toml", [])


def test_running_a_finished_run_again_exports_nothing_unless_its_export_was_lost(tmp_path, capsys):
    """Running the command of a finished run again re-exported the final model and said nothing (for
    a 7B run, gigabytes rewritten). It keeps the final model and says so; a final model a crash left
    missing, or older than the newest checkpoint (an export that failed after a longer run), is
    written again."""
    from codegemma.train.run import run

    recipe = _tiny_recipe(tmp_path)
    first = run(recipe)
    config = tmp_path / "run" / "final" / "config.json"
    written = config.stat().st_mtime_ns
    capsys.readouterr()
    again = run(recipe)
    assert again["already_finished"] is True and again["final"] == first["final"] and again["step"] == 4
    assert config.stat().st_mtime_ns == written
    assert "finished step 4 before; nothing trained" in capsys.readouterr().err
    import shutil

    shutil.rmtree(tmp_path / "run" / "final")  # the export crashed
    assert "already_finished" not in run(recipe) and config.is_file()
    stale = config.stat().st_mtime_ns - 10**9
    os.utime(config, ns=(stale, stale))  # made before the newest checkpoint
    assert "already_finished" not in run(recipe) and config.stat().st_mtime_ns > stale
