"""The training loop shared by every objective.

One optimizer step = `grad_accum` micro-batches on each of `world_size` processes. Losses are sums
divided by the trained-token (or pair) count of the whole global batch, so a run's trajectory does
not depend on how the global batch is split across processes and micro-batches. AdamW with warmup
and cosine decay, gradient clipping, bf16 autocast on GPUs and float32 on CPUs (`bf16` on a CPU:
bf16 matrix products and float32 elsewhere, codegemma.bf16_matmuls), optional torch.compile and
activation checkpointing. Metrics go to JSONL and TensorBoard; checkpoints hold everything needed
to continue the run bit-for-bit.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from codegemma import bf16_matmuls
from codegemma.errors import CodegemmaError, differences
from codegemma.train import checkpoint as ckpt
from codegemma.train import distributed, metrics, optim
from codegemma.train.distributed import DistEnv
from codegemma.train.recipe import Recipe
from codegemma.train.stopping import RunStopped, StopSignals


def to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def use_bf16(recipe: Recipe, device: torch.device) -> bool:
    """`auto`: bf16 autocast on a GPU that computes bf16 natively (Ampere and later); on a V100 or
    T4 torch only emulates it, slower than float32, which `auto` keeps there."""
    if recipe.train.precision == "auto":
        return device.type == "cuda" and native_bf16_gpu(device)
    return recipe.train.precision == "bf16"


def native_bf16_gpu(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


class Trainer:
    def __init__(self, recipe: Recipe, model: nn.Module, objective, data: Iterator, env: DistEnv | None = None,
                 evaluator: Callable[[nn.Module], dict] | None = None, flops_per_token: float | None = None,
                 out_dir: str | Path | None = None):
        self.recipe = recipe
        self.env = env or DistEnv()
        self.device = self.env.device
        self.raw_model = model  # placed on the device by `distributed.wrap` below
        self.objective = objective
        self.data = data
        self.evaluator = evaluator
        if flops_per_token is None:
            config = distributed.model_config(model)
            flops_per_token = metrics.flops_per_token(config, recipe.data.seq_len) if config is not None else 0.0
        self.flops_per_token = flops_per_token
        self.out_dir = Path(out_dir or recipe.out_dir)
        self.bf16 = use_bf16(recipe, self.device)
        if self.bf16 and self.device.type == "cuda" and not native_bf16_gpu(self.device) and self.env.is_main:
            warnings.warn(f"train.precision = 'bf16' on a {torch.cuda.get_device_name(self.device)}, which only "
                          "emulates bf16: slower than float32 there (train.precision = 'auto' or 'fp32')",
                          stacklevel=2)
        if self.bf16 and self.device.type == "cpu" and not bf16_matmuls.native_on_this_cpu() and self.env.is_main:
            # the same rounding through float32 products (codegemma.bf16_matmuls): ~0.8x float32's speed
            warnings.warn("train.precision = 'bf16' on a CPU without bf16 arithmetic (AMX or AVX512-BF16): the "
                          "bf16 rounding runs through float32 products, slower than float32 here "
                          "(train.precision = 'fp32')", stacklevel=2)
        if recipe.train.activation_checkpointing:
            _enable_activation_checkpointing(self.raw_model)
        fsdp = self.env.distributed and recipe.distributed.strategy == "fsdp"
        # FSDP's bf16 parameters on GPUs only: on a CPU `bf16` means bf16 matrix products and float32
        # everywhere else (norms, softmax, the C kernels), as in one process, which bf16 parameters
        # would turn into bf16 everywhere
        bf16_params = self.bf16 and self.device.type != "cpu"
        reference = getattr(objective, "reference", None)  # DPO's frozen copy of the start
        start = distributed.main_state(self.raw_model, self.env) if fsdp else None
        self.model = distributed.wrap(self.raw_model, self.env, recipe.distributed.strategy, bf16_params, start)
        if reference is not None and fsdp:  # sharded like the policy, from the same start
            distributed.shard_frozen(reference, self.env, bf16_params, start)
        elif reference is not None:
            distributed.place_copy(reference, self.raw_model, self.device)
        del start
        self.forward_model = torch.compile(self.model) if recipe.train.compile else self.model
        self.fsdp = fsdp
        # the fused AdamW (one kernel for all parameters) on CPUs too: there PyTorch's default steps
        # one parameter at a time, ~90 ms of the tiny-cpu recipe's ~1 s step, against ~25
        self.optimizer, self.scheduler = optim.build(self.raw_model, recipe.optim, recipe.train.steps,
                                                     fused=self.device.type in ("cuda", "cpu") and not fsdp)
        self.step = 0
        self.tokens_seen = 0
        self.logger: metrics.MetricsLogger | None = None  # opened by `fit`, once it knows the starting step
        self.peak = recipe.log.peak_flops or metrics.peak_flops(self.device, self.bf16)

    # ---- checkpointing -----------------------------------------------------------------
    def model_state(self) -> dict:
        if self.env.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}

    def _optim_state(self) -> dict:
        if self.env.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.raw_model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def _sharded_checkpoints(self) -> bool:
        fmt = self.recipe.checkpoint.format
        return fmt == "sharded" or (fmt == "auto" and self.fsdp)

    def save_checkpoint(self) -> Path | None:
        data_states = distributed.gather_objects(self.data.state_dict(), self.env)
        rng_states = distributed.gather_objects(ckpt.rng_state(), self.env)
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "scheduler": self.scheduler.state_dict(),
                 "data": data_states, "rng": rng_states, "recipe": self.recipe.to_dict(),
                 "world_size": self.env.world_size, "model_config": _config_dict(self.raw_model),
                 "trainable": self._trainable(),
                 "optimizer_groups": [len(g["params"]) for g in self.optimizer.param_groups]}
        keep = self.recipe.checkpoint.keep
        if self._sharded_checkpoints():
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(self.raw_model, self.optimizer)
            path = ckpt.save_sharded(self.out_dir / "checkpoints", self.step,
                                     {"model": model_state, "optimizer": optim_state},
                                     state if self.env.is_main else None, self.env, keep=keep)
            return path if self.env.is_main else None
        model_state, optim_state = self.model_state(), self._optim_state()
        path = None
        if self.env.is_main:
            state.update(model=model_state, optimizer=optim_state)
            path = ckpt.save(self.out_dir / "checkpoints", self.step, state, keep=keep)
        distributed.wait_for_main(self.env)
        return path

    def _read_checkpoint(self, path: str | Path) -> dict:
        """The checkpoint's state; under torchrun only the main process reads a checkpoint file.

        Each process reading it would hold the whole model and both Adam moments in CPU memory at
        once (7B: ~100 GB a process, 800 GB on an 8-GPU node, and as many reads of the file from
        shared storage). Instead the main process broadcasts everything but the weights and the
        optimizer state, whose tensors `broadcast_from_rank0` then sends one at a time (the other
        processes get empty `model` and `optimizer` dicts here). Of a sharded checkpoint every
        process reads the small state (and later its own shards, `_load_tensors`)."""
        if ckpt.is_sharded(path):
            return ckpt.load_state(path)
        if not self.env.distributed:
            return ckpt.load(path)
        box: list = [None]
        if self.env.is_main:
            try:
                state = ckpt.load(path)
                meta = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
                meta.setdefault("optimizer_groups", [len(g["params"]) for g in state["optimizer"].get("param_groups", [])])
                box = [meta]
            except Exception as exc:  # sent to every process: raised only here, the others would wait forever
                box = [exc]
        distributed.wait_for_main(self.env)  # while it reads the file
        torch.distributed.broadcast_object_list(box, src=0)
        if isinstance(box[0], Exception):
            raise box[0]
        meta = box[0]
        if self.env.is_main:
            meta.update(model=state["model"], optimizer=state["optimizer"])
        else:
            meta.update(model={}, optimizer={})
        return meta

    def load_checkpoint(self, path: str | Path) -> None:
        state = self._read_checkpoint(path)
        self._check_global_batch(path, state)
        saved, now = state.get("model_config"), _config_dict(self.raw_model)
        if saved is not None and now is not None and saved != now:
            raise CodegemmaError(f"{path}: saved from another model ({differences(saved, now)}); resume with "
                                 "the recipe the run started with, or start this one in another out_dir")
        saved = state.get("recipe", {}).get("objective", self.recipe.objective)
        if saved != self.recipe.objective:  # the data reader checks that its data are the ones saved
            raise CodegemmaError(f"{path}: saved from a {saved} run, resuming as {self.recipe.objective}; resume "
                                 "with the recipe the run started with, or start this one in another out_dir")
        # older checkpoints: the optimizer's group sizes from its state
        saved_groups = state.get("optimizer_groups") or \
            [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
        saved = state.get("trainable")  # older checkpoints: the optimizer's group sizes alone
        if (saved is not None and saved != self._trainable()) or \
                saved_groups != [len(g["params"]) for g in self.optimizer.param_groups]:
            changed = sorted(set(saved or ()) ^ set(self._trainable()))
            which = f" ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})" if changed else ""
            raise CodegemmaError(f"{path}: saved training other parameters than this recipe does{which}; resume "
                                 "with the model.freeze and lora settings the run started with, or start this one "
                                 "in another out_dir")
        own = optim.settings(self.optimizer)
        self._load_tensors(path, state)
        # the recipe's optimizer settings and schedule (train.steps may change), at the saved step
        optim.continue_at(self.optimizer, self.scheduler, own, state["scheduler"]["last_epoch"])
        # on another number of processes every reader takes the saved position, which all shared
        # (`ShardReader`), and a saved process's random state (LoRA dropout then draws otherwise)
        saved_ranks = len(state["data"])
        self.data.load_state_dict(state["data"][self.env.rank % saved_ranks])
        ckpt.set_rng_state(state["rng"][self.env.rank % saved_ranks])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]

    def _check_global_batch(self, path: str | Path, state: dict) -> None:
        """A run may resume on another number of processes (a node lost, a smaller allocation) or with
        another batch size and accumulation when processes × train.batch_size × train.grad_accum stays
        the same: the data readers then give the same sequences in the same optimizer steps, and the
        steps are the same up to float rounding. Otherwise it is refused."""
        train = state.get("recipe", {}).get("train", {})
        saved_world, batch, accum = state.get("world_size", 1), train.get("batch_size"), train.get("grad_accum", 1)
        now = self.recipe.train
        world = self.env.world_size
        if batch is None:  # older checkpoints: the data reader checks what it can
            if saved_world != world:
                raise CodegemmaError(f"{path}: saved with {saved_world} processes; resume with that many")
            return
        total = saved_world * batch * accum
        if total == world * now.batch_size * now.grad_accum:
            return
        if total % world == 0:
            hint = (f"with {world}, train.batch_size × train.grad_accum = {total // world} keeps its {total} "
                    "sequences a step and the data order")
        else:
            hint = f"{world} processes cannot split its {total} sequences a step evenly"
        raise CodegemmaError(f"{path}: saved with {saved_world} processes of train.batch_size {batch} and "
                             f"train.grad_accum {accum}; {hint}")

    def _load_tensors(self, path: str | Path, state: dict) -> None:
        """The weights and the optimizer state: from this process's shards of a sharded checkpoint,
        else from `state` (under torchrun sent by the main process one tensor at a time)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict, set_state_dict)

        if ckpt.is_sharded(path):
            model_state, optim_state = get_state_dict(self.raw_model, self.optimizer)
            ckpt.load_shards(path, {"model": model_state, "optimizer": optim_state}, self.env)
            set_state_dict(self.raw_model, self.optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        elif self.env.distributed:
            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(self.raw_model, state["model"], options=opts)
            set_optimizer_state_dict(self.raw_model, self.optimizer, state["optimizer"], options=opts)
        else:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])

    def _trainable(self) -> list[str]:
        return [name for name, p in self.raw_model.named_parameters() if p.requires_grad]

    # ---- one step ----------------------------------------------------------------------
    def _autocast(self):
        if not self.bf16:
            return nullcontext()
        if self.device.type == "cpu":  # bf16 products only, so the float32 CPU kernels keep the rest
            return bf16_matmuls.enabled()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self) -> dict:
        micro = [to_device(next(self.data), self.device) for _ in range(self.recipe.train.grad_accum)]
        counts = [self.objective.count(b).to(self.device).float() for b in micro]
        global_count = distributed.all_reduce_sum(torch.stack(counts).sum(), self.env).clamp(min=1.0)
        # DDP and FSDP average gradients over processes; scaling by world/global_count turns that
        # average into the gradient of the global-batch mean.
        scale = self.env.world_size / global_count
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        stat_sums: dict[str, torch.Tensor] = {}  # an objective's per-micro-batch means, weighted by count
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
            with sync:
                with self._autocast():
                    total, stats = self.objective.loss_sum(self.forward_model, batch)
                (total * scale).backward()
            loss_sum += total.detach().float()
            for k, v in stats.items():
                stat_sums[k] = stat_sums.get(k, 0.0) + v.detach().float() * counts[i]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                   self.recipe.optim.grad_clip or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # the loss and the objective's statistics over the global batch, in one reduction
        sums = distributed.all_reduce_sum(torch.stack([loss_sum, *stat_sums.values()]), self.env) / global_count
        loss, stats = sums[0], dict(zip(stat_sums, sums[1:].tolist()))
        tokens = sum(_batch_tokens(b) for b in micro) * self.env.world_size
        return {"loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens,
                self.objective.count_name: int(global_count.item()), **stats}

    # ---- the run -----------------------------------------------------------------------
    def fit(self, resume: bool = True, on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Train to `recipe.train.steps`, continuing from the newest checkpoint when `resume`."""
        latest = ckpt.latest(self.out_dir / "checkpoints") if resume else None
        if latest is not None:
            self.load_checkpoint(latest)
        r = self.recipe
        history = []
        if self.step >= r.train.steps:  # finished already: nothing to train, evaluate or save
            return history
        self.logger = metrics.MetricsLogger(self.out_dir, r.log.tensorboard, enabled=self.env.is_main,
                                            after_step=self.step)
        bar = _progress(r, self.step, self.env.is_main)
        try:  # the log is closed however the run ends: finished, stopped, diverged or failed
            with StopSignals() as stop:
                try:
                    self._steps(bar, history, stop, on_step)
                finally:
                    if bar is not None:
                        bar.close()
                # still under the stop handling: a Ctrl-C or a scheduler's SIGTERM during the final
                # evaluation lets it and the final checkpoint finish (a second one stops at once),
                # where it would lose the steps since the last periodic checkpoint
                self.evaluate()
                self.save_checkpoint()
        finally:
            self.logger.close()
        return history

    def _steps(self, bar, history: list[dict], stop: StopSignals, on_step) -> None:
        """Steps up to `recipe.train.steps`, with the periodic evaluations and checkpoints; on a stop
        signal, the checkpoint of the step just taken, then `RunStopped`."""
        r = self.recipe
        # throughput counts step time only, not evaluation or checkpoint writing
        window_tokens, window_time = 0, 0.0
        while self.step < r.train.steps:
            started = time.perf_counter()
            out = self.train_step()
            window_time += time.perf_counter() - started
            self.step += 1
            self.tokens_seen += out["tokens"]
            window_tokens += out["tokens"]
            history.append(out)
            if self.step % r.log.every == 0 or self.step == r.train.steps:
                tps = window_tokens / max(window_time, 1e-9)
                record = {**out, "tokens_seen": self.tokens_seen, "tokens_per_s": tps}
                if self.flops_per_token and self.peak:
                    record["mfu"] = tps * self.flops_per_token / (self.peak * self.env.world_size)
                self.logger.log(self.step, "train", record)
                window_tokens, window_time = 0, 0.0
            if not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])):
                # the step wrote non-finite weights: saving them would replace good checkpoints
                raise CodegemmaError(f"step {self.step}: loss {out['loss']}, gradient norm {out['grad_norm']} at "
                                     f"learning rate {out['lr']:.3g}: the run diverged and stopped without saving; "
                                     f"its newest checkpoint is {ckpt.latest(self.out_dir / 'checkpoints')} "
                                     "(a lower optim.lr may help)")
            if bar is not None:
                bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}", refresh=False)
                bar.update(1)  # redraws at most every `mininterval`
            if on_step is not None:
                on_step(self.step, out)
            if r.eval.every and self.step % r.eval.every == 0 and self.step < r.train.steps:
                self.evaluate()
            periodic = r.checkpoint.every and self.step % r.checkpoint.every == 0 and self.step < r.train.steps
            # (only the main process gets a path back; the others take part in the same saves)
            saved = self.save_checkpoint() if periodic else None
            signum = stop.requested(self.env)
            if signum and self.step < r.train.steps:
                if not periodic:
                    saved = self.save_checkpoint()
                raise RunStopped(signum, self.step, saved)

    def evaluate(self) -> dict:
        if self.evaluator is None:
            return {}
        # Evaluation must not consume the training RNG streams, or a resumed run would diverge.
        saved = ckpt.rng_state()
        self.model.eval()
        with torch.no_grad(), self._autocast():
            result = self.evaluator(self.raw_model if not self.fsdp else self.model)
        ckpt.set_rng_state(saved)
        self.logger.log(self.step, "eval", result)
        return result


def _batch_tokens(batch) -> int:
    if "tokens" in batch:
        return batch["tokens"].numel()
    return sum(_batch_tokens(v) for v in batch.values() if isinstance(v, dict))


def _config_dict(model: nn.Module) -> dict | None:
    config = distributed.model_config(model)
    return config.to_dict() if config is not None else None


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward pass instead of storing its activations."""
    target = model
    while not hasattr(target, "gradient_checkpointing"):
        children = [getattr(target, a) for a in ("base_model", "model") if hasattr(target, a)]
        if not children:
            raise ValueError("this model does not support activation checkpointing")
        target = children[0]
    target.gradient_checkpointing = True


def _progress(recipe: Recipe, start: int, enabled: bool):
    if not (enabled and recipe.log.progress):
        return None
    from tqdm.auto import tqdm

    # written to a file (a cluster job's log) the bar would add a line's worth every step: once a minute there
    interval = 0.1 if sys.stderr.isatty() else 60.0
    return tqdm(total=recipe.train.steps, initial=start, desc=recipe.name, dynamic_ncols=True, mininterval=interval)
