"""CPU processes (gloo) under torchrun follow the single-process loss trajectory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codegemma.train import metrics

from .conftest import recipe_toml, write_shards

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str]):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, procs", [("ddp", 2), ("fsdp", 2), ("fsdp", 1)])
def test_processes_match_one(tmp_path, strategy, procs):
    """`procs` processes (1: torchrun still forms a process group and wraps the model) match a plain run."""
    shards = write_shards(tmp_path / "shards", n=64)
    steps = 6
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n[checkpoint]\nevery = 3\n"
    (tmp_path / "one.toml").write_text(recipe_toml(tmp_path / "one", shards, steps, extra))
    (tmp_path / "two.toml").write_text(recipe_toml(tmp_path / "two", shards, steps, extra))
    cli = ["-m", "codegemma", "train", "run"]
    # the same global batch: 1 x 8 sequences vs `procs` processes x 8 / procs
    _run([sys.executable, *cli, str(tmp_path / "one.toml"), "--set", "train.batch_size=8"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
          *cli, str(tmp_path / "two.toml"), "--set", f"train.batch_size={8 // procs}"])
    one = metrics.read(tmp_path / "one" / "metrics.jsonl")
    two = metrics.read(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == steps
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
    assert (tmp_path / "two" / "final" / "config.json").is_file()
