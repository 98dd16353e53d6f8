"""What one training step minimises. Every objective reports a loss *sum* and a count, so the loop
can normalise by the count of the whole global batch (all micro-batches, all processes)."""

from __future__ import annotations

import torch
from torch import nn

from codegemma.train import losses


class LanguageModeling:
    """Next-token loss on trained positions: pretraining (FIM, packed files) and SFT (model turns)."""

    name = "lm"

    def count(self, batch: dict) -> torch.Tensor:
        return losses.shift(batch)[3].sum()

    def loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        total, _ = losses.lm_loss_sum(model, batch)
        return total, {}


class Preference:
    """DPO on (chosen, rejected) pairs against a frozen reference.

    The reference is either a separate frozen model or, for LoRA runs, the same model with its
    adapters switched off (no second copy of the weights).
    """

    name = "dpo"

    def __init__(self, beta: float, reference: nn.Module | None = None):
        self.beta = beta
        self.reference = reference
        if reference is not None:
            reference.eval().requires_grad_(False)

    def count(self, batch: dict) -> torch.Tensor:
        return torch.tensor(batch["chosen"]["tokens"].shape[0])

    def _logps(self, model: nn.Module, batch: dict) -> torch.Tensor:
        both = {k: torch.cat([batch["chosen"][k], batch["rejected"][k]]) for k in ("tokens", "segment_ids", "loss_mask")}
        return losses.sequence_logprob(model, both["tokens"], both["segment_ids"], both["loss_mask"])

    def loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        n = batch["chosen"]["tokens"].shape[0]
        policy = self._logps(model, batch)
        with torch.no_grad():
            if self.reference is not None:
                ref = self._logps(self.reference, batch)
            else:
                from codegemma.train.lora import adapters_disabled, has_adapters

                inner = getattr(model, "module", model)  # DDP wraps the LoRA model
                if not has_adapters(inner):
                    raise ValueError("DPO without a reference model needs LoRA adapters to switch off")
                with adapters_disabled(inner):
                    ref = self._logps(inner, batch)
        per_pair, stats = losses.dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
        return per_pair.sum(), stats
