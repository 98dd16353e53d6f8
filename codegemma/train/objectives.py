"""What one training step minimises. Every objective reports a loss *sum* and a count, so the loop
can normalise by the count of the whole global batch (all micro-batches, all processes). Further
statistics `loss_sum` returns are means over its batch's count (DPO's rewards a pair), which the
loop weights by that count into means over the global batch."""

from __future__ import annotations

import torch
from torch import nn

from codegemma.train import losses


class LanguageModeling:
    """Next-token loss on trained positions: pretraining (FIM, packed files) and SFT (model turns).

    With `psm_first_token` = (weight, (prefix, suffix, middle) sentinel ids), the loss on each PSM
    middle's first token is weighed by `weight` in training (held-out losses stay unweighted).
    With `psm_prefix_distill` = (weight, the same ids, sentinel ids to leave out, middle tokens),
    training adds `losses.lm_loss_sum_with_prefix_distill`'s KL term and logs it as `psm_prefix_kl`."""

    name = "lm"
    count_name = "trained_tokens"  # what `count` counts, as the step's log names it

    def __init__(self, psm_first_token: tuple[float, tuple[int, int, int]] | None = None,
                 psm_prefix_distill: tuple[float, tuple[int, int, int], list[int], int] | None = None):
        self.psm_first_token = psm_first_token
        self.psm_prefix_distill = psm_prefix_distill

    def count(self, batch: dict) -> torch.Tensor:
        return losses.shift(batch)[3].sum()

    def loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        weights = self._weights if self.psm_first_token else None
        if self.psm_prefix_distill:
            weight, ids, excluded, tokens = self.psm_prefix_distill
            total, count, kl = losses.lm_loss_sum_with_prefix_distill(model, batch, weight, ids, excluded, weights,
                                                                       tokens)
            return total, {"psm_prefix_kl": kl / count}
        total, _ = losses.lm_loss_sum(model, batch, weights)
        return total, {}

    def _weights(self, inputs: torch.Tensor) -> torch.Tensor:
        weight, ids = self.psm_first_token
        starts = losses.psm_middle_starts(inputs, *ids)
        return torch.where(starts, weight, 1.0)

    def held_out(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(loss sum, count, sums of further metrics) on a held-out batch, without a gradient."""
        total, count = losses.lm_loss_sum(model, batch)
        return total.float(), count, {}


class Preference:
    """DPO on (chosen, rejected) pairs against a frozen reference.

    The reference is either a separate frozen model or, for LoRA runs, the same model with its
    adapters switched off (no second copy of the weights).
    """

    name = "dpo"
    count_name = "pairs"

    def __init__(self, beta: float, reference: nn.Module | None = None):
        self.beta = beta
        self.reference = reference
        if reference is not None:
            reference.eval().requires_grad_(False)

    def count(self, batch: dict) -> torch.Tensor:
        return torch.tensor(batch["chosen"]["tokens"].shape[0])

    def loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The pairs' summed DPO loss, with its gradient.

        The loss depends on each row's summed log-probability, which the fused head cannot
        differentiate through without the full logits. But the loss's derivative in each row's
        log-probability is known once a gradient-free pass has scored the rows, and the gradient
        is then that of a weighted next-token loss (`losses.weighted_token_loss`): one more
        forward pass instead of [rows, tokens, vocab] logits and their gradient in memory."""
        both = self._both(batch)
        policy, ref = self._logps(model, both)
        n = len(policy) // 2
        policy.requires_grad_(True)
        with torch.enable_grad():
            per_pair, stats = losses.dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
            (d_logp,) = torch.autograd.grad(per_pair.sum(), policy)
        surrogate = losses.weighted_token_loss(model, both, -d_logp)
        # the value of the DPO loss, the gradient of the surrogate (which equals the loss's)
        return surrogate - surrogate.detach() + per_pair.sum().detach(), stats

    def held_out(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(DPO loss sum, pairs, sums of the implicit rewards and of the preference accuracy) on
        held-out pairs, without a gradient."""
        policy, ref = self._logps(model, self._both(batch))
        n = len(policy) // 2
        per_pair, stats = losses.dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta)
        return per_pair.sum(), torch.tensor(n, device=per_pair.device), {k: v * n for k, v in stats.items()}

    @staticmethod
    def _both(batch: dict) -> dict:
        """Chosen rows, then rejected rows, as one batch."""
        return {k: torch.cat([batch["chosen"][k], batch["rejected"][k]]) for k in ("tokens", "segment_ids", "loss_mask")}

    def _logps(self, model: nn.Module, both: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's response log-probability under the policy and under the reference."""
        policy = losses.sequence_logprob(model, both)
        if self.reference is not None:
            return policy, losses.sequence_logprob(self.reference, both)
        from codegemma.train.lora import adapters_disabled, has_adapters

        inner = getattr(model, "module", model)  # DDP wraps the LoRA model
        if not has_adapters(inner):
            raise ValueError("DPO without a reference model needs LoRA adapters to switch off")
        with adapters_disabled(inner):
            return policy, losses.sequence_logprob(inner, both)
