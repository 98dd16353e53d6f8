"""LoRA adapters through `peft` on the project's Gemma, and merging them back into full weights."""

from __future__ import annotations

import torch
from torch import nn

from codegemma.errors import CodegemmaError
from codegemma.train.recipe import LoraSection


def apply_lora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    """Wrap `model` so only low-rank adapters on `cfg.target_modules` train; the base is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    check_targets(model, cfg.target_modules)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                        bias="none")
    # inject_adapter_in_model works on any nn.Module (no Hugging Face config needed) and keeps the
    # model's own class, so forward signatures, KV caches and checkpoints stay the same.
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Refuse targets peft would match nothing with, fail on with a traceback, or adapt wrongly.

    peft matches a target against the end of each module's dotted name, so `q_proj`,
    `self_attn.q_proj` and `layers.0.self_attn.q_proj` are all valid ways to name projections.
    """
    if not targets:
        raise CodegemmaError("lora.target_modules is empty: name the projections to adapt, e.g. q_proj, v_proj")
    modules = dict(model.named_modules())
    matches = {t: [name for name in modules if name == t or name.endswith("." + t)] for t in targets}
    missing = [t for t, names in matches.items() if not names]
    if missing:
        raise CodegemmaError(f"lora.target_modules not in the model: {missing}")
    # The embedding is also the output head (tied weights): the head reads the base weight, so an
    # adapter there would train the input side only, and merging it would change the head as well:
    # the merged model would not compute what was trained.
    tied = [t for t, names in matches.items() if "embed_tokens" in names]
    if tied:
        raise CodegemmaError(f"lora.target_modules {tied}: the embedding is tied to the output head and cannot "
                             "take a LoRA adapter; target the linear projections (q_proj ... down_proj)")
    # peft only adapts linear layers here; anything else (norms, whole blocks) it rejects with a traceback
    wrong = sorted({f"{t} ({type(modules[n]).__name__})" for t, names in matches.items() for n in names
                    if not isinstance(modules[n], nn.Linear)})
    if wrong:
        raise CodegemmaError(f"lora.target_modules must name linear projections; these are not: {', '.join(wrong)}")


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
    """A plain (adapter-free) state dict from a LoRA model's full state dict.

    Only the model's structure is read (which layers carry adapters, and their scale), never its
    weights: the model may live on a GPU or on the meta device, and no copy of it is made, which at
    the end of a LoRA run of a large model would double the memory the weights take.
    """
    from peft.tuners.lora import LoraLayer

    model = getattr(model, "module", model)  # DDP's wrapper: its names are the state's with a prefix
    merged_weights, adapter_keys = {}, set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefix = f"{name}." if name else ""
        weight = state[f"{prefix}base_layer.weight"]
        for adapter in module.active_adapters:
            a, b = state[f"{prefix}lora_A.{adapter}.weight"], state[f"{prefix}lora_B.{adapter}.weight"]
            adapter_keys |= {f"{prefix}lora_A.{adapter}.weight", f"{prefix}lora_B.{adapter}.weight"}
            # as peft's merge: the product in float32 where half precision on a CPU would be slow
            if b.device.type == "cpu" and b.dtype in (torch.float16, torch.bfloat16):
                a, b = a.float(), b.float()
            delta = b @ a
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            weight = weight + (delta * module.scaling[adapter]).to(weight.dtype)
        merged_weights[f"{prefix}base_layer.weight"] = weight.detach().clone()
    left = [k for k in state if k not in adapter_keys and k not in merged_weights and ("lora_" in k or "base_layer" in k)]
    if left:
        raise CodegemmaError(f"adapter tensors that match no LoRA layer of the model: {left[:3]}")
    # the state's own order (GGUF and safetensors files list tensors as the model does)
    return {k.replace(".base_layer.", ".") if k in merged_weights else k: merged_weights.get(k, v)
            for k, v in state.items() if k not in adapter_keys}


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
