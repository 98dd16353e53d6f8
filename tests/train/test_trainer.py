"""The training loop: learning, accumulation equivalence, checkpoints, exact resume after SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from codegemma import bf16_matmuls
from codegemma.errors import CodegemmaError
from codegemma.train import build, checkpoint, metrics, objectives, run
from codegemma.train import recipe as recipe_mod
from codegemma.train.distributed import DistEnv
from codegemma.train.trainer import Trainer

from .conftest import recipe_toml, write_shards

REPO = Path(__file__).resolve().parents[2]


def make_recipe(tmp_path: Path, shards: Path, **train) -> recipe_mod.Recipe:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "r.toml"
    path.write_text(recipe_toml(tmp_path / "run", shards))
    return recipe_mod.load(path, [f"train.{k}={v}" for k, v in train.items()])


class Stop(Exception):
    """Ends a run from its step callback, as a crash would."""


def stop_after(last: int):
    def on_step(step, out):
        if step == last:
            raise Stop
    return on_step


def train(recipe, steps_callback=None):
    torch.manual_seed(recipe.seed)
    model, _, _ = build.build_model(recipe, None)
    data = run.train_data(recipe, DistEnv(), None)
    trainer = Trainer(recipe, model, objectives.LanguageModeling(), data)
    return trainer, trainer.fit(on_step=steps_callback)


def test_loss_falls_and_everything_is_logged(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards, steps=30)
    trainer, history = train(recipe)
    losses = [h["loss"] for h in history]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5
    records = metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert all(key in r for r in records), key
    assert records[0]["lr"] < records[2]["lr"]  # warmup
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step_00000030.pt"


def test_the_progress_bar_written_to_a_log_file_redraws_rarely(tmp_path, shards, capsys):
    """Every step's redraw would add a line's worth to a cluster job's log: 122,000 of them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "r.toml"
    path.write_text(recipe_toml(tmp_path / "run", shards, steps=30))
    train(recipe_mod.load(path, ["log.progress=true"]))
    err = capsys.readouterr().err  # not a terminal
    assert "30/30" in err
    assert err.count("\r") <= 3  # the first draw and the last, not one per step


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path, shards):
    one = make_recipe(tmp_path / "a", shards, steps=4, batch_size=8, grad_accum=1)
    two = make_recipe(tmp_path / "b", shards, steps=4, batch_size=4, grad_accum=2)
    _, h1 = train(one)
    _, h2 = train(two)
    for a, b in zip(h1, h2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


@pytest.mark.filterwarnings("ignore:train.precision = 'bf16' on a CPU without bf16 arithmetic")
def test_bf16_on_a_cpu_follows_float32(tmp_path, shards):
    """`precision = "bf16"` on a CPU: bf16 products (codegemma.bf16_matmuls), float32 elsewhere."""
    _, h32 = train(make_recipe(tmp_path / "a", shards, steps=6))
    trainer, h16 = train(make_recipe(tmp_path / "b", shards, steps=6, precision="bf16"))
    with trainer._autocast():
        assert bf16_matmuls.active() and not torch.is_autocast_enabled("cpu")
    for a, b in zip(h32, h16):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3)
    assert [a["loss"] for a in h32] != [b["loss"] for b in h16]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_arithmetic_warns_that_float32_is_faster(tmp_path, shards, monkeypatch, native):
    monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(make_recipe(tmp_path, shards, steps=1, precision="bf16"))
    slower = [w for w in caught if "CPU without bf16 arithmetic" in str(w.message)]
    assert len(slower) == (0 if native else 1)
    if slower:
        assert "train.precision = 'fp32'" in str(slower[0].message)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_gpus_that_compute_it(tmp_path, shards, monkeypatch, native):
    """`auto` on a GPU: bf16 where it is native (A100, H100); on a V100 or T4, which only emulate it
    (slower than float32), float32. Asked for by name, bf16 is kept."""
    from codegemma.train import trainer as trainer_mod

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or native)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    gpu = torch.device("cuda:0")
    assert trainer_mod.use_bf16(make_recipe(tmp_path, shards, precision="auto"), gpu) == native
    assert asked == [False]
    assert trainer_mod.use_bf16(make_recipe(tmp_path, shards, precision="bf16"), gpu)
    assert not trainer_mod.use_bf16(make_recipe(tmp_path, shards, precision="fp32"), gpu)
    assert not trainer_mod.use_bf16(make_recipe(tmp_path, shards, precision="auto"), torch.device("cpu"))


def test_frozen_parameters_stay_as_they_start(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards, steps=8)
    recipe.model.freeze = ["layers.*.self_attn.*", "layers.0.mlp.*"]
    start, _, _ = build.build_model(recipe_mod.from_dict({"model": {"preset": "tiny-gemma"}}), None)
    trainer, _ = train(recipe)
    after = dict(trainer.model.named_parameters())
    for name, p in start.named_parameters():
        moved = not torch.equal(p, after[name])
        assert moved != ("self_attn" in name or name.startswith("layers.0.mlp")), name
        assert after[name].requires_grad == moved
    assert all(p.requires_grad for group in trainer.optimizer.param_groups for p in group["params"])


def test_a_freeze_pattern_that_matches_nothing_is_an_error(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards)
    recipe.model.freeze = ["layers.*.attention.*"]
    with pytest.raises(CodegemmaError, match="matches no parameter"):
        build.build_model(recipe, None)
    recipe.model.freeze = ["*"]
    with pytest.raises(CodegemmaError, match="nothing would train"):
        build.build_model(recipe, None)


@pytest.mark.slow
def test_compiled_training_follows_eager(tmp_path, shards):
    """`train.compile`: the torch.compile'd model (PyTorch's ops, the CPU kernels stand aside under
    compilation) trains to the eager run's losses, up to float rounding."""
    _, eager = train(make_recipe(tmp_path / "eager", shards, steps=3))
    _, compiled = train(make_recipe(tmp_path / "compiled", shards, steps=3, compile="true"))
    for a, b in zip(eager, compiled):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


@pytest.mark.parametrize("form", ["file", "sharded"])
def test_resume_from_checkpoint_in_process(tmp_path, shards, form):
    """Stopped after step 5, the run continues from its step-3 checkpoint, a file or a sharded
    directory (`checkpoint.format`), and logs the uninterrupted run's losses exactly."""
    full = make_recipe(tmp_path / "full", shards, steps=8)
    _, reference = train(full)
    part = make_recipe(tmp_path / "part", shards, steps=8)
    part.checkpoint.every = 3
    part.checkpoint.format = form

    with pytest.raises(Stop):
        train(part, stop_after(5))
    ckpt_dir = tmp_path / "part" / "run" / "checkpoints"
    assert {f.stat().st_mode & 0o777 for f in ckpt_dir.rglob("*") if f.is_file()} == {0o644}  # not mkstemp's 0600
    assert checkpoint.latest(ckpt_dir).name == {"file": "step_00000003.pt", "sharded": "step_00000003"}[form]
    _, resumed = train(part)  # continues from step 3
    assert [h["loss"] for h in resumed] == [h["loss"] for h in reference[3:]]


def test_a_run_resumes_with_another_batch_size_and_accumulation(tmp_path, shards):
    """Saved with 4 sequences a batch × 3 accumulated, a run continues with 6 × 2 (less memory, or
    another machine): the same 12 sequences a step, across the epoch's end too (64 sequences: five
    steps an epoch), so the uninterrupted run's losses within float rounding. A split that changes
    the sequences a step is refused, saying what keeps them."""
    _, reference = train(make_recipe(tmp_path / "full", shards, steps=8, batch_size=4, grad_accum=3))
    part = make_recipe(tmp_path / "part", shards, steps=8, batch_size=4, grad_accum=3)
    part.checkpoint.every = 3

    with pytest.raises(Stop):
        train(part, stop_after(5))
    (tmp_path / "part" / "run" / "checkpoints" / "latest").write_text("step_00000003.pt\n")
    part.train.grad_accum = 1
    with pytest.raises(CodegemmaError, match=r"step_00000003.pt: saved with 1 processes of train.batch_size 4 and "
                                             r"train.grad_accum 3; with 1, train.batch_size × train.grad_accum = 12 "
                                             r"keeps its 12 sequences a step and the data order"):
        train(part)
    part.train.batch_size, part.train.grad_accum = 6, 2
    _, resumed = train(part)
    assert len(resumed) == 5
    for a, b in zip(reference[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_a_resumed_run_with_more_steps_follows_the_new_schedule(tmp_path, shards):
    """`train.steps` may change on resume: the rest of the run decays to the new end, with the
    rates a run of that many steps has, not towards the checkpoint's old end."""
    recipe = make_recipe(tmp_path / "part", shards, steps=4)
    train(recipe)
    recipe.train.steps = 8
    _, resumed = train(recipe)
    _, full = train(make_recipe(tmp_path / "full", shards, steps=8))
    assert [h["lr"] for h in resumed] == [h["lr"] for h in full[4:]]


def test_resuming_with_another_model_names_what_differs(tmp_path, shards):
    recipe = make_recipe(tmp_path, shards, steps=4)
    recipe.checkpoint.every = 2
    train(recipe)
    recipe.train.steps = 6
    recipe.model.overrides = {"n_layers": 3}
    with pytest.raises(CodegemmaError, match=r"step_00000004.pt: saved from another model \(.*n_layers 2 there, "
                                             r"3 here\); resume with the recipe the run started with"):
        train(recipe)


def test_resuming_with_other_frozen_parameters_is_refused(tmp_path, shards):
    """The optimizer state holds moments for the parameters that trained: with another model.freeze
    they would be refused by torch with a traceback, or (as many of the same shapes) go silently
    to other parameters."""
    recipe = make_recipe(tmp_path, shards, steps=2)
    recipe.model.freeze = ["layers.0.*"]
    train(recipe)
    recipe.train.steps = 4
    recipe.model.freeze = ["layers.1.*"]  # as many parameters, of the same shapes
    with pytest.raises(CodegemmaError, match=r"step_00000002.pt: saved training other parameters than this recipe "
                                             r"does \(layers.0.*\); resume with the model.freeze"):
        train(recipe)
    recipe.model.freeze = []
    with pytest.raises(CodegemmaError, match="saved training other parameters"):
        train(recipe)
    recipe.model.freeze = ["layers.0.*"]
    _, resumed = train(recipe)
    assert len(resumed) == 2


def test_resuming_on_other_data_is_refused_and_on_moved_data_is_not(tmp_path, shards):
    """A data position saved in one stream would go on silently in another."""
    recipe = make_recipe(tmp_path, shards, steps=4)
    recipe.checkpoint.every = 2
    train(recipe)
    recipe.train.steps = 6
    recipe.data.train = str(write_shards(tmp_path / "other", seed=1))  # as many sequences of other data
    with pytest.raises(CodegemmaError, match=r"cannot resume data reader: .*other holds other sequences than the "
                                             r"ones it was saved with"):
        train(recipe)
    moved = tmp_path / "moved"
    shards.rename(moved)  # the same shards elsewhere: the run continues
    recipe.data.train, recipe.objective = str(moved), "sft"
    with pytest.raises(CodegemmaError, match=r"step_00000004.pt: saved from a pretrain run, resuming as sft"):
        train(recipe)
    recipe.objective = "pretrain"
    train(recipe)


def test_a_diverged_step_stops_the_run_and_keeps_the_good_checkpoints(tmp_path, shards):
    """A non-finite loss (here injected at the fifth step) writes non-finite weights: the run stops
    with a one-line error and saves nothing, so the checkpoints before it survive."""

    class Diverging(objectives.LanguageModeling):
        calls = 0

        def loss_sum(self, model, batch):
            Diverging.calls += 1
            total, stats = super().loss_sum(model, batch)
            return (total * float("nan") if Diverging.calls == 5 else total), stats

    recipe = make_recipe(tmp_path, shards, steps=8)
    recipe.checkpoint.every = 2
    torch.manual_seed(recipe.seed)
    model, _, _ = build.build_model(recipe, None)
    trainer = Trainer(recipe, model, Diverging(), build.shard_reader(recipe.data.train, recipe, DistEnv()))
    ckpts = tmp_path / "run" / "checkpoints"
    with pytest.raises(CodegemmaError, match=rf"step 5: loss nan, gradient norm nan at learning rate .*diverged "
                                             rf"and stopped without saving; its newest checkpoint is "
                                             rf"{ckpts / 'step_00000004.pt'}"):
        trainer.fit()
    assert checkpoint.list_steps(ckpts) == [2, 4]
    assert all(torch.isfinite(v).all() for v in checkpoint.load(ckpts / "step_00000004.pt")["model"].values())


def _cli(recipe_path: Path, *extra: str, log=subprocess.PIPE) -> subprocess.Popen:
    """`train run` in a process of its own; its output to pipes, or to `log` (a file), for a run left
    to itself that must not block on a full pipe."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "codegemma", "train", "run", str(recipe_path), *extra],
                            env=env, stdout=log, stderr=log)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(tmp_path):
    shards = write_shards(tmp_path / "shards", n=64)
    steps = 200
    extra = "[checkpoint]\nevery = 10\nkeep = 2\n"
    for name in ("reference", "killed"):
        (tmp_path / f"{name}.toml").write_text(recipe_toml(tmp_path / name, shards, steps, extra))

    # the reference runs beside the run that is killed: each takes one thread
    with open(tmp_path / "reference.log", "wb") as log:
        reference = _cli(tmp_path / "reference.toml", log=log)
    killed = _cli(tmp_path / "killed.toml")
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "step_00000030.pt").exists():
        assert killed.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    last = checkpoint.latest(ckpts)
    assert last is not None and checkpoint.load(last)["step"] < steps
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]

    resumed = _cli(tmp_path / "killed.toml")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-2000:]

    want = [r["loss"] for r in metrics.read(tmp_path / "reference" / "metrics.jsonl")]
    got = [r["loss"] for r in metrics.read(tmp_path / "killed" / "metrics.jsonl")]
    assert len(want) == len(got) == steps
    assert got == want  # exactly, not approximately
