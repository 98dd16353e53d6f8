"""SIGINT and SIGTERM stop a run after its step with a checkpoint, from which it continues exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codegemma.train import checkpoint, metrics
from codegemma.train.stopping import RunStopped

from .conftest import recipe_toml, write_shards
from .test_trainer import make_recipe, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def interruptible():
    """Ctrl-C handled as in a terminal, also where the test run itself started with SIGINT ignored
    (`pytest &` in a script): runs started from here, in this process or in a child that inherits
    the disposition, must see a SIGINT that is not ignored (the case where it is has its own test)."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def handlers() -> dict[int, object]:
    """The process's SIGINT and SIGTERM handlers (another library, e.g. ray, may have set them)."""
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def signal_at(step: int, signum: int, times: int = 1):
    def on_step(done, out):
        if done == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
    return on_step


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_and_the_run_continues_exactly(tmp_path, shards, signum):
    _, reference = train(make_recipe(tmp_path / "full", shards, steps=8))
    part = make_recipe(tmp_path / "part", shards, steps=8)
    part.checkpoint.every = 100  # no periodic checkpoint: the one there is the signal's
    before = handlers()
    with pytest.raises(RunStopped) as stopped:
        train(part, signal_at(5, signum))
    assert (stopped.value.signum, stopped.value.step) == (signum, 5)
    assert stopped.value.checkpoint == checkpoint.latest(tmp_path / "part" / "run" / "checkpoints")
    assert checkpoint.load(stopped.value.checkpoint)["step"] == 5
    assert f"stopped by {signal.Signals(signum).name} after step 5" in str(stopped.value)
    assert handlers() == before  # handlers put back
    _, resumed = train(part)
    assert [h["loss"] for h in resumed] == [h["loss"] for h in reference[5:]]


def test_a_second_ctrl_c_stops_at_once(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards, steps=8)
    recipe.checkpoint.every = 100
    before = handlers()
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(recipe, signal_at(3, signal.SIGINT, times=2))
    assert not isinstance(stopped.value, RunStopped)
    assert checkpoint.latest(tmp_path / "run" / "checkpoints") is None
    assert handlers() == before


def test_a_signal_on_a_periodic_checkpoints_step_saves_once(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards, steps=8)
    recipe.checkpoint.every = 4
    with pytest.raises(RunStopped) as stopped:
        train(recipe, signal_at(4, signal.SIGTERM))
    assert stopped.value.checkpoint.name == "step_00000004.pt"
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))] == ["step_00000004.pt"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before the signal"
        assert time.time() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_on_the_command_line(tmp_path):
    """`train run` stopped by SIGINT says where its checkpoint is and exits 130; the same command
    finishes the run with the losses of a run never stopped."""
    shards = write_shards(tmp_path / "shards", n=64)
    for name in ("reference", "stopped"):
        (tmp_path / f"{name}.toml").write_text(recipe_toml(tmp_path / name, shards, 80, "[checkpoint]\nevery = 20\n"))
    cli = [sys.executable, "-m", "codegemma", "train", "run"]
    # the reference runs beside the run that is stopped: each takes one thread
    with open(tmp_path / "reference.log", "w") as log:
        reference = subprocess.Popen([*cli, str(tmp_path / "reference.toml")], env=_env(), stdout=log, stderr=log)
    run = subprocess.Popen([*cli, str(tmp_path / "stopped.toml")], env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "stopped" / "checkpoints" / "step_00000020.pt", run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    last = checkpoint.latest(tmp_path / "stopped" / "checkpoints")
    step = checkpoint.load(last)["step"]
    assert 20 <= step < 80 and f"codegemma train: stopped by SIGINT after step {step}: checkpoint {last}" in err
    assert "Traceback" not in err
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]

    subprocess.run([*cli, str(tmp_path / "stopped.toml")], env=_env(), check=True, capture_output=True)
    want = [r["loss"] for r in metrics.read(tmp_path / "reference" / "metrics.jsonl")]
    got = [r["loss"] for r in metrics.read(tmp_path / "stopped" / "metrics.jsonl")]
    assert got == want


@pytest.mark.slow
@pytest.mark.parametrize("strategy, first", [("ddp", "step_00000020.pt"), ("fsdp", "step_00000020")])
def test_processes_agree_to_stop_when_one_is_signalled(tmp_path, strategy, first):
    """Under torchrun, SIGTERM to one process (a preempted node) stops both after the same step with
    one checkpoint (under FSDP2 each process writes its shards), and the run then continues as if
    never stopped."""
    shards = write_shards(tmp_path / "shards", n=64)
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n[checkpoint]\nevery = 20\n"
    for name in ("reference", "stopped"):
        (tmp_path / f"{name}.toml").write_text(recipe_toml(tmp_path / name, shards, 60, extra))
    cli = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "codegemma", "train", "run"]
    # the reference runs beside the run that is stopped
    with open(tmp_path / "reference.log", "w") as log:
        reference = subprocess.Popen([*cli, str(tmp_path / "reference.toml"), "--set", "train.batch_size=2"],
                                     env=_env(), stdout=log, stderr=log)
    run = subprocess.Popen([*cli, str(tmp_path / "stopped.toml"), "--set", "train.batch_size=2"], env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "stopped" / "checkpoints" / first, run)
    workers = _children(run.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGTERM)  # the later-started worker only
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    last = checkpoint.latest(tmp_path / "stopped" / "checkpoints")
    step = checkpoint.load(last)["step"]
    assert 20 <= step < 60 and f"stopped by SIGTERM after step {step}" in err
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]

    subprocess.run([*cli, str(tmp_path / "stopped.toml"), "--set", "train.batch_size=2"], env=_env(), check=True,
                   capture_output=True)
    want = [r["loss"] for r in metrics.read(tmp_path / "reference" / "metrics.jsonl")]
    got = [r["loss"] for r in metrics.read(tmp_path / "stopped" / "metrics.jsonl")]
    assert got == want


def test_a_second_signal_of_a_kind_acts_at_once_after_the_other_kind(tmp_path):
    """Ctrl-C, then SIGTERM twice (a scheduler repeating its notice): the second SIGTERM did nothing,
    since only a repeat of the first signal received counted, and the run could only be killed."""
    from codegemma.train.stopping import StopSignals

    before = handlers()
    calls = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGINT and calls == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM]  # what SIGTERM did before the run
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_signal_ignored_when_the_run_started_stays_ignored(tmp_path):
    """A run started with SIGINT ignored (`cmd &` in a script, so that a Ctrl-C for the foreground job
    spares it) was stopped by that Ctrl-C all the same."""
    from codegemma.train.stopping import StopSignals

    before = handlers()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == 0
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_final_evaluation_lets_the_run_finish(tmp_path, shards, signum):
    """The final evaluation and checkpoint ran after the stop handling ended: a Ctrl-C there was a
    KeyboardInterrupt and a SIGTERM killed the process, losing the steps since the last checkpoint."""
    import torch

    from codegemma.train import build, objectives
    from codegemma.train.distributed import DistEnv
    from codegemma.train.trainer import Trainer

    recipe = make_recipe(tmp_path, shards, steps=6)
    recipe.checkpoint.every = 4
    torch.manual_seed(recipe.seed)
    model, _, _ = build.build_model(recipe, None)
    data = build.shard_reader(recipe.data.train, recipe, DistEnv())
    before = handlers()

    def evaluator(model):
        # unhandled, the signal would end the test process itself
        assert signal.getsignal(signum) != before[signum], "no stop handling during the final evaluation"
        os.kill(os.getpid(), signum)  # as a final evaluation of minutes would be interrupted
        return {"loss": 1.0}

    Trainer(recipe, model, objectives.LanguageModeling(), data, DistEnv(), evaluator).fit()
    assert checkpoint.load(checkpoint.latest(tmp_path / "run" / "checkpoints"))["step"] == 6
    assert [r["step"] for r in metrics.read(tmp_path / "run" / "metrics.jsonl", kind="eval")] == [6]
    assert handlers() == before
