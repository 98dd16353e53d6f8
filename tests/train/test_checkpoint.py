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
