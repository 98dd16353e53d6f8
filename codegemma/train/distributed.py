"""Data parallelism under `torchrun`: process-group setup, DDP or FSDP2 wrapping, and reductions.

Without torchrun (no WORLD_SIZE in the environment) everything here degrades to a single process,
so the same training code runs on a laptop and on a cluster. Under torchrun a process group is
formed even for one process, so that `--nproc_per_node=1` runs the real DDP/FSDP2 code path (on
one GPU, say). The backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from codegemma.errors import CodegemmaError


# How long the other processes wait for the main one to read or write files (`wait_for_main`).
FILE_WAIT = timedelta(hours=1)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun, so a process group exists
    file_group: object = None  # the process group `wait_for_main` waits on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launched


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        # asked for by name: without this, the first tensor moved there fails deep inside torch
        if not torch.cuda.is_available():
            raise CodegemmaError(f"train.device {preference!r}: this machine has no CUDA GPU that torch can use "
                                 "(train.device = 'auto' picks the CPU)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise CodegemmaError(f"train.device {preference!r}: this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s)")
    return device


def init(preference: str = "auto") -> DistEnv:
    """Join the process group torchrun describes in the environment, if any."""
    launched = "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    file_group = None
    if launched:
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        file_group = dist.new_group(backend="gloo", timeout=FILE_WAIT)
    return DistEnv(rank, world_size, local_rank, device, launched, file_group)


def wait_for_main(env: DistEnv) -> None:
    """Every process waits here until the main one arrives, which may first read or write files: the
    start, a checkpoint, the final export, tokenized data. At 7B those take minutes (a checkpoint with
    its Adam moments is ~100 GB), past NCCL's 10-minute limit on a collective, which would end the
    run; so the wait is a barrier on a CPU (gloo) group of its own, allowed `FILE_WAIT`, and the
    training collectives keep their short limit."""
    if env.distributed:
        dist.barrier(group=env.file_group)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_max(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def model_config(model: nn.Module):
    """The ModelConfig of a Gemma, looking through DDP and LoRA wrappers (None for another model)."""
    from codegemma.config import ModelConfig

    seen = model
    for _ in range(6):
        if isinstance(getattr(seen, "config", None), ModelConfig):
            return seen.config
        seen = getattr(seen, "module", None) or getattr(seen, "base_model", None) or getattr(seen, "model", None)
        if seen is None:
            return None
    return None


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the model's `layers` list (looked through a LoRA wrapper)."""
    inner = model
    while not hasattr(inner, "layers") and hasattr(inner, "model"):
        inner = inner.model
    if hasattr(inner, "base_model") and not hasattr(inner, "layers"):
        inner = inner.base_model.model
    return inner.layers


def wrap(model: nn.Module, env: DistEnv, strategy: str, bf16: bool, start: dict | None = None) -> nn.Module:
    """The model on this process's device: as it is in one process, else DDP, or FSDP2
    (`fully_shard` per block, then the root) with bf16 parameters in its mixed-precision policy
    when `bf16`.

    Under torchrun only the main process needs the weights; the others may build the model on the
    meta device (`build.build_model(weights=False)`), so that a 7B start is not read and held in CPU
    memory once per GPU. DDP's construction sends the main process's parameters and buffers to the
    others. Under FSDP2 every process shards the empty model first and then receives its shards of
    `start` (the main process's weights, `main_state`), so no GPU ever holds the whole model."""
    if not env.distributed:
        return model.to(env.device)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        _materialize(model, env.device)
        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    start = main_state(model, env) if start is None else start
    model.to("meta")  # the main process's weights live on in `start` until they are sent
    # With `bf16` parameters compute in bf16; gradients are reduced in float32 either way.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for block in blocks(model):
        fully_shard(block, mp_policy=policy)
    # The root's inputs are the caller's: its float ones are loss weights (DPO's -dL/dlogp per row),
    # which FSDP's default cast to the parameter dtype would round to bf16's 8 bits. The blocks'
    # inputs are activations, in the compute dtype already.
    fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=policy.param_dtype, reduce_dtype=torch.float32,
                                                      cast_forward_inputs=False))
    _receive_shards(model, start, env.device)
    return model


def shard_frozen(model: nn.Module, env: DistEnv, bf16: bool, start: dict) -> nn.Module:
    """FSDP2 for a model that only runs forward without a gradient (DPO's reference), filled with
    `start` (`main_state`) like the trained model: sharded instead of whole on every GPU (a 7B
    reference in float32 is 34 GB a GPU).

    Its root reshards after forward too: FSDP keeps a root's parameters gathered from forward until
    backward, and a model without a gradient has no backward, so its embedding (the largest
    parameter) would stay gathered for the rest of the run."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to("meta")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, cast_forward_inputs=False)
    for block in blocks(model):
        fully_shard(block, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mp_policy=policy, reshard_after_forward=True)
    _receive_shards(model, start, env.device)
    return model


def main_state(model: nn.Module, env: DistEnv) -> dict:
    """The weights the main process sends the others (on the CPU, where they were loaded); {}
    in the other processes, whose model may have none."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()} if env.is_main else {}


def place_copy(copy: nn.Module, source: nn.Module, device: torch.device) -> nn.Module:
    """`copy` (DPO's reference, an empty shell) on `device` with `source`'s weights: the trained
    model's start, placed there (and under DDP sent to every process) a moment before."""
    _materialize(copy, device)
    copy.load_state_dict(source.state_dict())
    return copy


def _materialize(model: nn.Module, device: torch.device) -> None:
    """A model on `device`: memory for one without weights (filled by the caller), or moved there."""
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)
        _reset_buffers(model)
    else:
        model.to(device)


def _receive_shards(model: nn.Module, start: dict, device: torch.device) -> None:
    """Memory for this process's shards, filled from the main process's `start` one tensor at a time."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _materialize(model, device)
    # (a copy of the dict: torch puts the model's shards into the one it is given)
    set_model_state_dict(model, dict(start), options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _reset_buffers(model: nn.Module) -> None:
    """The buffers a state dict does not hold (RoPE tables), computed again after `to_empty`."""
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
