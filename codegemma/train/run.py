"""From a recipe to a finished run: build everything, train, evaluate, export, plot.

Works the same in one process and under `torchrun` (every process runs this; only the main one
writes logs, plots and exports).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS, sentinel_ids
from codegemma.train import build, distributed, metrics, objectives
from codegemma.train.allocator import freed_memory_kept
from codegemma.train.evaluate import INFILL_ANSWERS, Evaluator, check_fits_context, infill_scorers
from codegemma.train.recipe import Recipe
from codegemma.train.trainer import Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_data(recipe: Recipe, env, tokenizer):
    """The reader of training batches for the recipe's objective."""
    path = Path(recipe.data.train)
    if not recipe.data.train or not path.exists():
        raise CodegemmaError(f"recipe data.train not found: {recipe.data.train!r}")
    accum = recipe.train.grad_accum
    if recipe.objective == "pretrain":
        return build.shard_reader(path, recipe, env, grad_accum=accum)
    prepared = _prepared(recipe, env, tokenizer, path, "train")
    if recipe.objective == "sft":
        return build.shard_reader(prepared, recipe, env, grad_accum=accum)
    from codegemma.train.preference import PairReader

    return PairReader(prepared, recipe.train.batch_size, env.rank, env.world_size, recipe.seed, grad_accum=accum)


def _prepared(recipe: Recipe, env, tokenizer, source: Path, split: str) -> Path:
    """SFT/DPO JSONL is tokenized into shards under the run directory (by the main process), again
    whenever the file, the tokenizer or the sequence length differ from what the shards were made
    of. A resume then finds other sequences than its checkpoint's, and its data reader refuses them."""
    if source.is_dir():
        return source
    if tokenizer is None:
        raise CodegemmaError(f"{source}: tokenizing conversations needs a tokenizer (recipe `tokenizer` or `model.init`)")
    out = Path(recipe.out_dir) / "data" / split
    if env.is_main:
        made_from = {"source_sha256": _sha256(source), "seq_len": recipe.data.seq_len,
                     "tokenizer_sha256": hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()}
        index = out / ("index.json" if recipe.objective == "sft" else "chosen/index.json")
        earlier = json.loads(index.read_text()).get("meta", {}).get("made_from") if index.is_file() else None
        if not index.is_file() or earlier not in (None, made_from):  # None: made before it was recorded
            if recipe.objective == "sft":
                from codegemma.train.sft import prepare
            else:
                from codegemma.train.preference import prepare
            prepare(source, tokenizer, recipe.data.seq_len, out, meta={"made_from": made_from})
    distributed.wait_for_main(env)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_evaluator(recipe: Recipe, env, tokenizer, context: int, objective=None):
    """Held-out loss (`objective`'s, by default the next-token loss) and infilling scorers per
    `recipe.eval`, for a model of `context` tokens."""
    factory = None
    if recipe.data.eval:
        eval_path = _prepared(recipe, env, tokenizer, Path(recipe.data.eval), "eval") \
            if recipe.objective != "pretrain" else Path(recipe.data.eval)
        if recipe.objective == "dpo":  # held-out pairs: their DPO loss and preference accuracy
            from codegemma.train.preference import PairReader

            factory = lambda: PairReader(eval_path, recipe.train.batch_size, env.rank, env.world_size,  # noqa: E731
                                         recipe.seed, shuffle=False)
        else:
            factory = lambda: build.shard_reader(eval_path, recipe, env, shuffle=False)  # noqa: E731
        factory()  # fail now, not at the first evaluation
    scorers, probe = [], None
    if recipe.eval.infill_files:
        if tokenizer is None:
            raise CodegemmaError("eval.infill_files needs a tokenizer")
        check_fits_context(recipe.eval.infill_max_prompt_tokens, recipe.eval.infill_max_new_tokens, context,
                           "eval.infill_max_prompt_tokens + eval.infill_max_new_tokens")
        try:
            scorers, probe = infill_scorers(tokenizer, recipe.eval.infill_files, recipe.eval.infill_examples,
                                            recipe.eval.infill_max_prompt_tokens, recipe.eval.infill_orders)
        except CodegemmaError as e:
            raise CodegemmaError(f"eval.infill_files: {e}") from None
    if factory is None and not scorers:
        return None
    return Evaluator(env, factory, recipe.eval.batches, scorers, recipe.eval.infill_max_new_tokens, probe,
                     answers_path=Path(recipe.out_dir) / INFILL_ANSWERS,
                     share_examples=recipe.distributed.strategy != "fsdp",
                     held_out=objective.held_out if objective is not None else None)


def make_objective(recipe: Recipe, model, tokenizer=None):
    if recipe.objective == "dpo":
        reference = None if recipe.lora.enabled else build.reference_shell(model)
        return objectives.Preference(recipe.dpo.beta, reference)
    weight, distill = recipe.data.psm_first_token_weight, recipe.data.psm_prefix_distill_weight
    if weight == 1.0 and distill == 0.0:
        return objectives.LanguageModeling()
    option = "data.psm_first_token_weight" if weight != 1.0 else "data.psm_prefix_distill_weight"
    if distill and recipe.distributed.strategy == "fsdp":
        # its head reads the embedding outside forward, where FSDP holds only this process's shard
        raise CodegemmaError("data.psm_prefix_distill_weight does not run under FSDP: use distributed.strategy = \"ddp\"")
    if tokenizer is None:
        raise CodegemmaError(f"{option} needs a tokenizer with the FIM sentinels")
    try:
        ids = sentinel_ids(tokenizer)
    except ValueError as e:
        raise CodegemmaError(f"{option}: {e}") from None
    s = CODEGEMMA_SENTINELS
    psm = (ids[s.prefix], ids[s.suffix], ids[s.middle])
    return objectives.LanguageModeling((weight, psm) if weight != 1.0 else None,
                                       (distill, psm, sorted(ids.values()), recipe.data.psm_prefix_distill_tokens)
                                       if distill else None)


def run(recipe: Recipe, resume: bool = True) -> dict:
    """Train per `recipe`; returns a summary (final step, last losses, output paths)."""
    env = distributed.init(recipe.train.device)
    threads = torch.get_num_threads()  # the run's setting is the run's: a notebook's later work keeps its own
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    # on a CPU, each step's large tensors reuse the last step's memory: no page faults (allocator.py)
    memory = freed_memory_kept() if env.device.type == "cpu" else nullcontext()
    try:
        with memory, only_run_in(Path(recipe.out_dir), env.is_main):
            return _train(recipe, env, resume)
    finally:
        torch.set_num_threads(threads)
        distributed.shutdown(env)


@contextmanager
def only_run_in(out_dir: Path, main: bool):
    """While a run's main process lives, it holds a lock on `out_dir/.lock`: a second run started in
    the same directory (another terminal, a job submitted twice) stops before it writes anything,
    where the two would interleave their checkpoints and metrics. The lock goes with the process."""
    if not main:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise CodegemmaError(f"{out_dir}: another run is writing there (process {holder}); wait for it to end, "
                                 "or choose another out_dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _train(recipe: Recipe, env: distributed.DistEnv, resume: bool) -> dict:
    seed_everything(recipe.seed)
    tokenizer = build.load_tokenizer(recipe.tokenizer) if recipe.tokenizer else None
    # under torchrun only the main process reads the start; the Trainer sends it to the others
    model, config, tokenizer = build.build_model(recipe, tokenizer, weights=env.is_main)
    distributed.wait_for_main(env)  # while it reads
    if recipe.data.seq_len > config.max_seq_len:  # it would train positions the model does not claim to have
        raise CodegemmaError(f"data.seq_len {recipe.data.seq_len} is longer than the model's context of "
                             f"{config.max_seq_len} tokens (max_seq_len): train at most that long")
    build.check_data_vocabulary(recipe, tokenizer, config)
    if recipe.lora.enabled:
        if env.distributed and recipe.distributed.strategy == "fsdp":
            raise CodegemmaError("LoRA runs use distributed.strategy = 'ddp' (adapters are small)")
        from codegemma.train.lora import apply_lora

        model = apply_lora(model, recipe.lora)
    objective = make_objective(recipe, model, tokenizer)
    data = train_data(recipe, env, tokenizer)
    evaluator = make_evaluator(recipe, env, tokenizer, config.max_seq_len, objective)
    seq_len = recipe.data.seq_len
    trainer = Trainer(recipe, model, objective, data, env, evaluator,
                      flops_per_token=metrics.flops_per_token(config, seq_len))
    out_dir = Path(recipe.out_dir)
    trained = trainer.fit(resume=resume)
    summary = {"step": trainer.step, "out_dir": str(out_dir)}
    # a run finished before (nothing trained now) whose final model is newer than its last checkpoint
    # has nothing left to do: exporting again would rewrite the same weights (gigabytes for 2B/7B).
    # A final model that a crash left missing or older than the checkpoint is exported again.
    done = not trained and _exported_after(out_dir / "final", out_dir / "checkpoints")
    # (gathering the state is collective under torchrun: every process takes part whatever it decided)
    state = None if done and not env.distributed else trainer.model_state()
    if env.is_main:
        if done:
            summary["already_finished"] = True
            summary["final"] = str(out_dir / "final")
            print(f"codegemma train: {out_dir} finished step {trainer.step} before; nothing trained, final model "
                  f"{out_dir / 'final'} kept", file=sys.stderr)
        else:
            summary["final"] = str(export_final(model, state, config, tokenizer, out_dir / "final", recipe))
        curves, log = out_dir / "curves.png", out_dir / "metrics.jsonl"
        if recipe.log.plots and log.exists():
            if not (done and curves.exists() and curves.stat().st_mtime_ns >= log.stat().st_mtime_ns):
                from codegemma.train.plots import plot_run

                plot_run(log, curves, recipe.name)
            summary["plot"] = str(curves)
    # the other processes wait for the export: none tears the process group down while the
    # main process may still use it (not in `finally`: after an error this would hang)
    distributed.wait_for_main(env)
    return summary


def _exported_after(final: Path, ckpt_dir: Path) -> bool:
    """Whether `final` holds a complete export written after the newest checkpoint was saved (it
    appears only complete: `save_hf` writes it under another name and renames it)."""
    from codegemma.train import checkpoint

    newest = checkpoint.latest(ckpt_dir)
    config = final / "config.json"
    return newest is not None and config.is_file() and config.stat().st_mtime_ns >= checkpoint.saved_at(newest)


def export_final(model, state: dict, config, tokenizer, out: Path, recipe: Recipe) -> Path:
    """The trained weights as a Hugging Face directory (LoRA adapters merged in)."""
    from codegemma.checkpoints import save_hf
    from codegemma.checkpoints.loading import empty_model, load_weights_into

    if recipe.lora.enabled:
        from codegemma.train.lora import merged_state

        state = merged_state(model, state)
    # the gathered tensors themselves, not a second (at 7B, 28 GB) randomly initialised model
    fresh = load_weights_into(empty_model(config), state.items(), "the trained model")
    save_hf(fresh, config, tokenizer, out, replace=True)  # the previous final model goes only once this one is complete
    return out
