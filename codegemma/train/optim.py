"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from codegemma.train.recipe import OptimSection


class WarmupCosine:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total_steps`.

    A callable object rather than a closure so `LambdaLR.state_dict()` records it.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps = max(0, warmup_steps)
        self.total_steps = max(1, total_steps)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices; leave norms (1-D) and the embedding alone, as is usual for Gemma-like models."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or "embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build(model: nn.Module, cfg: OptimSection, total_steps: int, fused: bool = False):
    """The optimizer and its LR scheduler for a run of `total_steps` optimizer steps."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    return opt, sched


def settings(opt: torch.optim.Optimizer) -> list[dict]:
    """Each parameter group's hyperparameters (all but its parameters)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]


def continue_at(opt: torch.optim.Optimizer, sched, own: list[dict], steps_done: int) -> None:
    """After a checkpoint's optimizer state is loaded: go on after `steps_done` steps with this run's
    hyperparameters (`own`, from `settings` before the load) and schedule, not the checkpoint's.

    The checkpoint's would win otherwise (loading an optimizer or LambdaLR state replaces them): a
    run resumed with another `train.steps` would decay towards the old end, and a lower `optim.lr`
    would be ignored. With the same recipe the rates are the ones the checkpoint holds, exactly."""
    for group, mine in zip(opt.param_groups, own):
        group.update(mine)
    sched.last_epoch = steps_done
    rates = [base * fn(steps_done) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, rates):
        group["lr"] = lr
    sched._last_lr = rates
