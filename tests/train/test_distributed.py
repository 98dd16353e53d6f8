"""CPU processes (gloo) under torchrun follow the single-process loss trajectory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codegemma.train import metrics

from .conftest import recipe_toml, write_shards

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str]):
    return _run_together(args)[0]


def _run_together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run independent commands side by side (a reference run beside a torchrun spends most of its
    time starting Python and torch on one core); each must succeed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    done = []
    try:
        for args, proc in zip(commands, procs):
            stdout, stderr = proc.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("strategy, procs, compiled", [("ddp", 2, False), ("fsdp", 2, False), ("fsdp", 1, False),
                                                       ("fsdp", 2, True)])
def test_processes_match_one(tmp_path, strategy, procs, compiled):
    """`procs` processes (1: torchrun still forms a process group and wraps the model) match a plain
    run; so do FSDP2 processes whose model is compiled, with activation checkpointing, against one
    compiled process."""
    shards = write_shards(tmp_path / "shards", n=64)
    steps = 6
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n[checkpoint]\nevery = 3\n"
    for name in ("one", "two"):
        text = recipe_toml(tmp_path / name, shards, steps, extra)
        if compiled:
            text = text.replace("[train]\n", "[train]\ncompile = true\nactivation_checkpointing = true\n")
        (tmp_path / f"{name}.toml").write_text(text)
    cli = ["-m", "codegemma", "train", "run"]
    # the same global batch: 1 x 8 sequences vs `procs` processes x 8 / procs
    _run_together([sys.executable, *cli, str(tmp_path / "one.toml"), "--set", "train.batch_size=8"],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   *cli, str(tmp_path / "two.toml"), "--set", f"train.batch_size={8 // procs}"])
    one = metrics.read(tmp_path / "one" / "metrics.jsonl")
    two = metrics.read(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == steps
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
    assert (tmp_path / "two" / "final" / "config.json").is_file()


@pytest.mark.slow
def test_ddp_processes_share_the_infilling_evaluation(tmp_path, small_tokenizer_path):
    """Under DDP each process scores every other infilling example; the gathered metrics are the
    single process's (losses within float rounding, the same greedy lines)."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = tmp_path / "heldout"
    files.mkdir()
    for source in sorted((stdlib / "json").glob("*.py")):
        (files / source.name).write_text(source.read_text(encoding="utf-8"))
    shards = write_shards(tmp_path / "shards", n=32, vocab=600)
    extra = f"""[model.overrides]
vocab_size = 600
[eval]
every = 2
infill_files = "{files.as_posix()}"
infill_examples = 7
infill_orders = ["psm", "spm", "l2r"]
infill_max_prompt_tokens = 96
infill_max_new_tokens = 8
"""
    for name in ("one", "two"):
        text = recipe_toml(tmp_path / name, shards, 2, extra)
        # `tokenizer` is a top-level key, so it goes before the first table
        text = text.replace('name = "test"', f'name = "test"\ntokenizer = "{small_tokenizer_path.as_posix()}"', 1)
        (tmp_path / f"{name}.toml").write_text(text)
    cli = ["-m", "codegemma", "train", "run"]
    _run_together([sys.executable, *cli, str(tmp_path / "one.toml"), "--set", "train.batch_size=4"],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   *cli, str(tmp_path / "two.toml"), "--set", "train.batch_size=2"])
    one, two = (metrics.read(tmp_path / name / "metrics.jsonl", kind="eval") for name in ("one", "two"))
    assert one and len(one) == len(two)
    for a, b in zip(one, two):
        assert {k for k in a if k.startswith("infill_exact_match")} == {
            "infill_exact_match", "infill_exact_match_spm", "infill_exact_match_l2r"}
        for key, value in a.items():
            if key.startswith("infill_exact_match"):
                assert b[key] == value, key
            elif isinstance(value, float):
                assert abs(b[key] - value) < 1e-4 * max(1.0, abs(value)), (key, value, b[key])
    # each run's last evaluation left its greedy lines in its out_dir, the same lines in both
    runs = [[json.loads(line) for line in (tmp_path / name / "infill-answers.jsonl").read_text().splitlines()]
            for name in ("one", "two")]
    assert runs[0] == runs[1] and len(runs[0]) == 3 * 7
    for order, tag in (("psm", ""), ("spm", "_spm"), ("l2r", "_l2r")):
        assert sum(r["exact"] for r in runs[0] if r["order"] == order) == round(one[-1][f"infill_exact_match{tag}"] * 7)

    # a finished model's evaluation, shared the same way under torchrun
    evaluate = ["-m", "codegemma", "train", "infill-eval", str(tmp_path / "one" / "final"), "--files", str(files),
                "--examples", "7", "--orders", "psm,l2r", "--max-prompt-tokens", "96", "--max-new-tokens", "8"]
    alone, shared, bf16 = _run_together(
        [sys.executable, *evaluate, "--answers", str(tmp_path / "alone.jsonl")],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *evaluate,
         "--answers", str(tmp_path / "shared.jsonl")],
        [sys.executable, *evaluate, "--precision", "bf16"])
    alone, shared = json.loads(alone.stdout), json.loads(shared.stdout.strip().splitlines()[-1])
    assert set(alone) == set(shared)
    for key, value in alone.items():
        assert shared[key] == pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) \
            else shared[key] == value, key
    # the same answers, once each, in the examples' order
    assert (tmp_path / "shared.jsonl").read_text() == (tmp_path / "alone.jsonl").read_text()
    # and they are the lines the run's own last evaluation wrote
    assert [json.loads(line) for line in (tmp_path / "alone.jsonl").read_text().splitlines()] == [
        r for r in runs[0] if r["order"] in ("psm", "l2r")]
    bf16 = json.loads(bf16.stdout)
    assert bf16["fim_middle_loss"] != alone["fim_middle_loss"]  # the products did run in bf16
    assert abs(bf16["fim_middle_loss"] - alone["fim_middle_loss"]) < 0.05


def test_a_cuda_device_on_a_machine_without_one_is_one_line(monkeypatch):
    """`train.device = "cuda"` where torch sees no GPU: a user error, not torch's assertion from
    deep inside the first `.to()`."""
    import torch

    from codegemma.errors import CodegemmaError
    from codegemma.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(CodegemmaError, match=rf"train.device '{name}': this machine has no CUDA GPU"):
            pick_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda:1")
    with pytest.raises(CodegemmaError, match="has 2 CUDA device"):
        pick_device("cuda:2")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_dpo_processes_match_one(tmp_path, small_tokenizer_path, lora):
    """DPO's two passes (rows scored without a gradient, then the weighted next-token loss) under
    DDP: the same losses and gradient norms as one process with the same global batch, and the
    same logged rewards and preference accuracy, which are the global batch's, not rank 0's."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Return {i}.\n", "chosen": f"return {i}", "rejected": "pass"})
                             + "\n" for i in range(16)))

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'objective = "dpo"\nout_dir = "{tmp_path / name}"\ntokenizer = "{small_tokenizer_path}"\n'
                        f'[model]\npreset = "tiny-gemma"\n[data]\ntrain = "{pairs}"\nseq_len = 48\n'
                        f'[optim]\nlr = 1e-3\nwarmup_steps = 1\n[train]\nsteps = 4\n[dpo]\nbeta = 0.5\n'
                        f'[lora]\nenabled = {str(lora).lower()}\nr = 4\n'
                        f'[log]\nevery = 1\ntensorboard = false\nplots = false\nprogress = false\n')
        return path

    cli = ["-m", "codegemma", "train", "run"]
    _run_together([sys.executable, *cli, str(recipe("one")), "--set", "train.batch_size=4"],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   *cli, str(recipe("two")), "--set", "train.batch_size=2"])
    one = metrics.read(tmp_path / "one" / "metrics.jsonl")
    two = metrics.read(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 4 and one[-1]["loss"] < one[0]["loss"]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
        assert a["pairs"] == b["pairs"] == 4
        for stat in ("reward_chosen", "reward_rejected", "reward_accuracy"):
            assert abs(a[stat] - b[stat]) < 1e-5, (a["step"], stat, a[stat], b[stat])


_RECORD_READS = """
import os, sys
from codegemma.train import checkpoint, recipe, run

real_load = checkpoint.load


def load(path):
    with open(sys.argv[2], "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    return real_load(path)


checkpoint.load = load
run.run(recipe.load(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_resumed_run_reads_its_checkpoint_in_the_main_process_only(tmp_path, strategy):
    """Resuming from a checkpoint file under torchrun: the main process reads it and sends the rest
    their part (every process reading it would hold a 7B model's whole training state in CPU
    memory, eight times on one node), and the resumed steps are the uninterrupted run's."""
    shards = write_shards(tmp_path / "shards", n=64)
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n[checkpoint]\nevery = 3\nkeep = 5\nformat = \"file\"\n"
    (tmp_path / "run.toml").write_text(recipe_toml(tmp_path / "run", shards, 6, extra))
    (tmp_path / "driver.py").write_text(_RECORD_READS)
    reads = tmp_path / "reads.txt"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(tmp_path / "driver.py"), str(tmp_path / "run.toml"), str(reads)]
    _run(torchrun)
    assert not reads.exists()  # a fresh run: nothing to read
    uninterrupted = metrics.read(tmp_path / "run" / "metrics.jsonl")
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_00000006.pt").unlink()
    (checkpoints / "latest").write_text("step_00000003.pt\n")
    _run(torchrun)
    assert reads.read_text().split() == ["0"]
    resumed = metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(uninterrupted, resumed):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), a["step"]


_SLOW_SHARD_WRITES = """
import os, sys, time
from datetime import timedelta

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from codegemma.train import recipe, run

# collectives time out after 4 s; the second process takes 8 s to write its shards the first time
# (a second time is the same wait), in a run given "slow" as argv[2]
real_init = dist.init_process_group
dist.init_process_group = lambda *a, **k: real_init(*a, **{**k, "timeout": timedelta(seconds=4)})
real_write = dcp.FileSystemWriter.write_data
slow = sys.argv[2:] == ["slow"]


def write_data(self, *args, **kwargs):
    global slow
    if os.environ["RANK"] == "1" and slow:
        slow = False
        time.sleep(8)
    return real_write(self, *args, **kwargs)


dcp.FileSystemWriter.write_data = write_data
run.run(recipe.load(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["strategy = \"fsdp\"\n[checkpoint]\n",
                                      "strategy = \"ddp\"\n[checkpoint]\nformat = \"sharded\"\n"])
def test_checkpoints_are_sharded_and_resume_exactly(tmp_path, settings):
    """Under FSDP2 (by default) each process writes and reads back its own shards of the weights and
    the Adam moments (a 7B run's ~100 GB of training state is never gathered into one process); under
    DDP, asked for, the processes share the writing of the replicated state. The processes wait for
    a slow writer on the long-wait group, not a training collective (4 s here); the resumed steps
    are the uninterrupted run's; and the checkpoint exports, read whole in one process, as the run's
    final model."""
    import torch

    from codegemma.checkpoints import load
    from codegemma.train import checkpoint
    from codegemma.train.export import load_trained

    shards = write_shards(tmp_path / "shards", n=64)
    extra = f"[distributed]\n{settings}every = 3\nkeep = 5\n"
    (tmp_path / "run.toml").write_text(recipe_toml(tmp_path / "run", shards, 6, extra))
    (tmp_path / "driver.py").write_text(_SLOW_SHARD_WRITES)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(tmp_path / "driver.py"), str(tmp_path / "run.toml")]
    _run([*torchrun, "slow"])
    uninterrupted = metrics.read(tmp_path / "run" / "metrics.jsonl")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000003", "step_00000006"]
    step6 = checkpoints / "step_00000006"
    assert sorted(p.name for p in step6.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    sizes = [(step6 / f"__{r}_0.distcp").stat().st_size for r in (0, 1)]
    assert max(sizes) < 0.6 * sum(sizes)  # each process wrote about half

    weights, _, _ = load_trained(tmp_path / "run")  # the run's newest checkpoint, step 6
    final = load(str(tmp_path / "run" / "final")).model.state_dict()
    assert weights.keys() == final.keys()
    assert all(torch.equal(weights[k], final[k]) for k in final)

    shutil.rmtree(step6)
    (checkpoints / "latest").write_text("step_00000003\n")
    _run(torchrun)
    resumed = metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(uninterrupted, resumed):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), a["step"]
    assert checkpoint.latest(checkpoints) == step6


@pytest.mark.slow
@pytest.mark.parametrize("strategy, form", [("fsdp", "sharded"), ("ddp", "file")])
def test_a_run_resumes_on_another_number_of_processes(tmp_path, strategy, form):
    """Saved by 2 processes of 4 sequences, a run continues in one process of 8 (a node lost, a
    smaller allocation): the same global batches, so the uninterrupted run's steps within float
    rounding. A number of processes that would change the global batch is refused, saying the
    batch size that keeps it."""
    from codegemma.train import checkpoint

    shards = write_shards(tmp_path / "shards", n=64)
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n[checkpoint]\nevery = 3\nkeep = 5\nformat = \"{form}\"\n"
    (tmp_path / "run.toml").write_text(recipe_toml(tmp_path / "run", shards, 6, extra))
    cli = ["-m", "codegemma", "train", "run", str(tmp_path / "run.toml")]
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli])
    uninterrupted = metrics.read(tmp_path / "run" / "metrics.jsonl")
    checkpoints = tmp_path / "run" / "checkpoints"
    step3 = checkpoint.latest(checkpoints).with_name("step_00000003" + (".pt" if form == "file" else ""))
    (checkpoints / "latest").write_text(step3.name + "\n")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    refused = subprocess.run([sys.executable, *cli], env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith(
        f"{step3}: saved with 2 processes of train.batch_size 4 and train.grad_accum 1; with 1, "
        "train.batch_size × train.grad_accum = 8 keeps its 8 sequences a step and the data order")
    _run([sys.executable, *cli, "--set", "train.batch_size=8"])
    resumed = metrics.read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(uninterrupted[3:], resumed[3:]):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])


_RECORD_START_READS = """
import os, sys
from codegemma.checkpoints import hf_dir
from codegemma.train import recipe, run

real_read = hf_dir.iter_tensors


def iter_tensors(*args, **kwargs):
    with open(sys.argv[2], "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    return real_read(*args, **kwargs)


hf_dir.iter_tensors = iter_tensors
run.run(recipe.load(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_only_the_main_process_reads_the_start(tmp_path, strategy):
    """A run from a checkpoint (`model.init`) under torchrun: the main process reads its weights
    and the others get them sent (every process reading a 7B start would hold it in CPU memory
    once per GPU, and under FSDP move it whole onto each GPU before sharding it), and the run
    follows one process from the same start."""
    import torch

    from codegemma.checkpoints import save_hf
    from codegemma.config import preset
    from codegemma.model import Gemma

    torch.manual_seed(7)  # not the weights a fresh run of the recipe would draw
    start = Gemma(preset("tiny-gemma"))
    start.init_weights(std=0.05)
    save_hf(start, start.config, None, tmp_path / "start")
    shards = write_shards(tmp_path / "shards", n=64)
    extra = f"[distributed]\nstrategy = \"{strategy}\"\n"
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text(recipe_toml(tmp_path / name, shards, 4, extra).replace(
            "[model]\n", f"[model]\ninit = \"{(tmp_path / 'start').as_posix()}\"\n"))
    (tmp_path / "driver.py").write_text(_RECORD_START_READS)
    reads = tmp_path / "reads.txt"
    _run_together([sys.executable, "-m", "codegemma", "train", "run", str(tmp_path / "one.toml"),
                   "--set", "train.batch_size=8"],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(tmp_path / "driver.py"), str(tmp_path / "two.toml"), str(reads)])
    assert reads.read_text().split() == ["0"]
    one, two = (metrics.read(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])


_SLOW_FILES = """
import os, sys, time
from datetime import timedelta

import torch.distributed as dist

import codegemma.checkpoints
from codegemma.checkpoints import hf_dir
from codegemma.train import checkpoint, recipe, run

# collectives time out after 4 s (NCCL's limit is 10 minutes); the main process's file work takes 8,
# the first time each of the functions named in argv[2] runs (a second time is the same wait)
real_init = dist.init_process_group
dist.init_process_group = lambda *a, **k: real_init(*a, **{**k, "timeout": timedelta(seconds=4)})
slowed = set(sys.argv[2].split(","))


def slow(name, real):
    def wrapped(*args, **kwargs):
        if os.environ["RANK"] == "0" and name in slowed:
            slowed.discard(name)
            time.sleep(8)
        return real(*args, **kwargs)
    return wrapped


hf_dir.iter_tensors = slow("read_start", hf_dir.iter_tensors)
checkpoint.save = slow("save", checkpoint.save)
checkpoint.load = slow("load", checkpoint.load)
codegemma.checkpoints.save_hf = slow("export", codegemma.checkpoints.save_hf)  # the final model
run.run(recipe.load(sys.argv[1]))
"""


@pytest.mark.slow
def test_the_others_wait_as_long_as_the_main_process_reads_and_writes(tmp_path):
    """At 7B the main process reads the start or a checkpoint, and writes checkpoints and the final
    model, for minutes, past NCCL's 10-minute limit on a collective. The other processes wait for it
    on a group of their own (`wait_for_main`), not in a training collective: with collectives timing
    out after 4 s, a run whose file work takes 8 s (each kind once) starts, saves, exports and resumes."""
    from codegemma.checkpoints import save_hf
    from codegemma.config import preset
    from codegemma.model import Gemma

    save_hf(Gemma(preset("tiny-gemma")), preset("tiny-gemma"), None, tmp_path / "start")
    shards = write_shards(tmp_path / "shards", n=64)
    (tmp_path / "run.toml").write_text(recipe_toml(tmp_path / "run", shards, 4, "[checkpoint]\nevery = 2\nkeep = 3\n")
                                       .replace("[model]\n", f"[model]\ninit = \"{(tmp_path / 'start').as_posix()}\"\n"))
    (tmp_path / "driver.py").write_text(_SLOW_FILES)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(tmp_path / "driver.py"), str(tmp_path / "run.toml")]
    _run([*torchrun, "read_start,save,export"])
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_00000004.pt").unlink()
    (checkpoints / "latest").write_text("step_00000002.pt\n")
    _run([*torchrun, "load"])
    assert [r["step"] for r in metrics.read(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_fsdp_bf16_on_a_cpu_follows_one_process(tmp_path):
    """`train.precision = "bf16"` on a CPU means bf16 matrix products and float32 everywhere else;
    under FSDP2 too (bf16 parameters would make it bf16 everywhere): the first step's loss and
    gradient norm are one process's within float32 rounding."""
    shards = write_shards(tmp_path / "shards", n=32)
    extra = "[distributed]\nstrategy = \"fsdp\"\n"
    cli = ["-m", "codegemma", "train", "run"]
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text(recipe_toml(tmp_path / name, shards, 1, extra))
    _run_together([sys.executable, *cli, str(tmp_path / "one.toml"), "--set", "train.batch_size=8",
                   "--set", "train.precision=bf16"],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli,
                   str(tmp_path / "two.toml"), "--set", "train.batch_size=4", "--set", "train.precision=bf16"])
    (a,), (b,) = (metrics.read(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert abs(a["loss"] - b["loss"]) < 1e-5, (a["loss"], b["loss"])
    assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"], (a["grad_norm"], b["grad_norm"])


def test_fsdp_keeps_float_loss_weights_in_float32(tmp_path):
    """With bf16 parameters FSDP2 casts a module's float inputs to bf16 by default; the root's
    `loss_weights` (DPO's per-row gradient weights) must reach the loss unrounded: weights of
    1 + 2^-10 (1 in bf16) scale the loss sum by exactly that."""
    import torch
    import torch.distributed as dist

    from codegemma.config import preset
    from codegemma.model import Gemma
    from codegemma.train import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = Gemma(preset("tiny-gemma"))
        model.init_weights()
        env = distributed.DistEnv(launched=True)
        model = distributed.wrap(model, env, "fsdp", bf16=True)
        tokens = torch.randint(5, 512, (2, 9))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        with torch.no_grad():
            plain, _ = model(inputs, targets=targets, loss_weights=torch.ones(targets.shape))
            scaled, _ = model(inputs, targets=targets, loss_weights=torch.full(targets.shape, 1 + 2 ** -10))
    finally:
        dist.destroy_process_group()
    assert scaled.item() / plain.item() == pytest.approx(1 + 2 ** -10, rel=2 ** -20)


_RECORD_REFERENCE = """
import sys
from torch.distributed.tensor import DTensor
from codegemma.train import recipe, run, trainer

real_fit = trainer.Trainer.fit


def fit(self, *args, **kwargs):
    params = list(self.objective.reference.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    with open(sys.argv[2], "a") as f:
        f.write(f"{local} {sum(p.numel() for p in params)}\\n")
    return real_fit(self, *args, **kwargs)


trainer.Trainer.fit = fit
run.run(recipe.load(sys.argv[1]))
"""


@pytest.mark.slow
def test_fsdp_dpo_shards_the_reference_and_matches_one_process(tmp_path, small_tokenizer_path):
    """Under FSDP2 DPO's frozen reference is sharded like the policy (each of 2 processes holds
    about half of it, not all of it: a 7B reference whole on every GPU is 17-34 GB), and the run
    follows one process with the same global batch."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Return {i}.\n", "chosen": f"return {i}", "rejected": "pass"})
                             + "\n" for i in range(16)))
    for name, batch in (("one", 4), ("two", 2)):  # the same global batch
        (tmp_path / f"{name}.toml").write_text(
            f'objective = "dpo"\nout_dir = "{(tmp_path / name).as_posix()}"\n'
            f'tokenizer = "{small_tokenizer_path.as_posix()}"\n[model]\npreset = "tiny-gemma"\n'
            f'[data]\ntrain = "{pairs.as_posix()}"\nseq_len = 48\n[optim]\nlr = 1e-3\nwarmup_steps = 1\n'
            f'[train]\nsteps = 3\nbatch_size = {batch}\n[dpo]\nbeta = 0.5\n[distributed]\nstrategy = "fsdp"\n'
            f'[log]\nevery = 1\ntensorboard = false\nplots = false\nprogress = false\n')
    (tmp_path / "driver.py").write_text(_RECORD_REFERENCE)
    sizes = tmp_path / "sizes.txt"
    _run_together([sys.executable, "-m", "codegemma", "train", "run", str(tmp_path / "one.toml")],
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(tmp_path / "driver.py"), str(tmp_path / "two.toml"), str(sizes)])
    for line in sizes.read_text().splitlines():
        local, whole = map(int, line.split())
        assert local <= whole // 2 + 64, (local, whole)  # a shard: half, and rows that do not split evenly
    assert len(sizes.read_text().splitlines()) == 2
    one, two = (metrics.read(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
