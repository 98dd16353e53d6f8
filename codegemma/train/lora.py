"""LoRA adapters through `peft` on the project's Gemma, and merging them back into full weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from codegemma.errors import CodegemmaError
from codegemma.train.recipe import LoraSection


def apply_lora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    """Wrap `model` so only low-rank adapters on `cfg.target_modules` train; the base is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if missing:
        raise CodegemmaError(f"lora.target_modules not in the model: {missing}")
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                        bias="none")
    # inject_adapter_in_model works on any nn.Module (no Hugging Face config needed) and keeps the
    # model's own class, so forward signatures, KV caches and checkpoints stay the same.
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += scale * B @ A) and drop the adapter layers."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def merged_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain (adapter-free) state dict from a LoRA model's full state dict."""
    clone = copy.deepcopy(model).cpu()
    clone.load_state_dict(state)
    return {k: v.detach().clone() for k, v in merge(clone).state_dict().items()}


def has_adapters(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


class adapters_disabled:
    """Context: the model computes with its base weights only (the DPO reference, for free)."""

    def __init__(self, model: nn.Module):
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def __enter__(self):
        for layer in self.layers:
            layer.enable_adapters(False)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.enable_adapters(True)
        return False
