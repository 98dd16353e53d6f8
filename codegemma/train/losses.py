"""Losses over packed sequences: next-token cross-entropy with segment and loss masks, and DPO.

Batch convention (shared with the shard reader): `tokens`, `segment_ids` (1, 2, ... per document,
0 = padding) and `loss_mask` (True = real, trainable token), all [B, T]. Targets are the tokens
shifted by one; position t is trained iff its target t+1 is a trainable token in the same segment,
so no position learns to predict across a document boundary or into padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, input segment ids, targets, trained-position mask) for next-token prediction."""
    tokens, seg, mask = batch["tokens"], batch["segment_ids"], batch["loss_mask"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    in_seg = seg[:, :-1]
    trained = mask[:, 1:].bool() & (seg[:, 1:] == in_seg) & (in_seg != 0)
    return inputs, in_seg, targets, trained


def attention_segments(segment_ids: torch.Tensor) -> torch.Tensor | None:
    """The segment ids the model needs to keep documents apart: None when every row is one
    document without padding (97% of the demo shards' rows are a long file's chunk), whose
    attention and positions are plain causal ones that SDPA computes faster without a mask
    tensor. Decided here, outside the model, so a compiled model sees no data-dependent branch."""
    one_document = (segment_ids == segment_ids[:, :1]) & (segment_ids != 0)
    return None if bool(one_document.all()) else segment_ids


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood [B, T] in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def psm_middle_starts(inputs: torch.Tensor, prefix_id: int, suffix_id: int, middle_id: int) -> torch.Tensor:
    """[B, T] True at each <|fim_middle|> of a PSM example: the position that predicts the middle's
    first token. An SPM example's <|fim_middle|> is followed by the prefix instead; the two are told
    apart by the example's <|fim_prefix|>, which SPM follows with <|fim_suffix|> at once (a PSM
    example with an empty prefix is an SPM example token for token, and counts as one)."""
    positions = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    last_prefix = torch.where(inputs == prefix_id, positions, -1).cummax(dim=1).values
    after_prefix = inputs.gather(1, (last_prefix + 1).clamp(max=inputs.shape[1] - 1))
    return (inputs == middle_id) & (last_prefix >= 0) & (after_prefix != suffix_id)


def lm_loss_sum(model, batch: dict[str, torch.Tensor], weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token losses over trained positions, and how many positions were trained.

    Returning the sum (not the mean) lets the caller divide by the token count of the whole global
    batch, so gradient accumulation and data parallelism give exactly the single-process gradient.
    `weights(inputs)`, where given, weighs each position's loss ([B, T] floats; the count is not
    weighted).
    """
    inputs, seg, targets, trained = shift(batch)
    loss_weights = trained if weights is None else trained * weights(inputs)
    total, _ = model(inputs, segment_ids=attention_segments(seg), targets=targets, loss_weights=loss_weights)  # fused head
    return total, trained.sum()


def psm_prefix_ends(inputs: torch.Tensor, prefix_id: int, suffix_id: int, middle_id: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, middle starts, prefix ends) of the PSM examples in `inputs`: each PSM example's
    <|fim_middle|> (`psm_middle_starts`) and the position of its prefix's last token, the one just
    before its <|fim_suffix|>. Left to right, that position predicts what the middle's first token
    predicts in PSM order: the text after the prefix."""
    starts = psm_middle_starts(inputs, prefix_id, suffix_id, middle_id)
    positions = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    last_suffix = torch.where(inputs == suffix_id, positions, -1).cummax(dim=1).values
    rows, cols = starts.nonzero(as_tuple=True)
    return rows, cols, last_suffix[rows, cols] - 1


def psm_middle_spans(inputs: torch.Tensor, seg: torch.Tensor, targets: torch.Tensor, trained: torch.Tensor,
                     ids: tuple[int, int, int], excluded: list[int], tokens: int) -> list[tuple[int, int, int, int, int]]:
    """(row, segment start, prefix end, middle start, n) for each PSM example whose middle's first
    token is trained: the row's first position in the example's segment, its prefix's last token,
    its <|fim_middle|>, and how many of the middle's first `tokens` tokens are trained before the
    sentinel that ends the middle (`excluded` holds the sentinel ids)."""
    rows, starts, ends = psm_prefix_ends(inputs, *ids)
    stop = (~trained | torch.isin(targets, torch.tensor(excluded, device=targets.device))).tolist()
    seg_rows = seg.tolist()
    spans = []
    for r, m, e in zip(rows.tolist(), starts.tolist(), ends.tolist()):
        if stop[r][m] or seg_rows[r][e] != seg_rows[r][m]:
            continue
        n = 1
        while n < tokens and m + n < len(stop[r]) and not stop[r][m + n]:
            n += 1
        s = seg_rows[r].index(seg_rows[r][e])  # segment ids run 1, 2, ... along a row
        spans.append((r, s, e, m, n))
    return spans


def _kl_sum(core, teacher: torch.Tensor, student: torch.Tensor, excluded: list[int]) -> torch.Tensor:
    """Sum over rows of KL(the teacher hidden states' next-token distribution without the `excluded`
    tokens, no gradient || the student hidden states' distribution), through the model's head."""
    with torch.no_grad():
        t_logits = core.logits(teacher).float()
        t_logits[:, excluded] = float("-inf")
        t = t_logits.softmax(-1)
    log_s = core.logits(student).float().log_softmax(-1)
    return (torch.special.xlogy(t, t) - t * log_s.masked_fill(t == 0, 0.0)).sum()


def _left_to_right_hidden(core, inputs: torch.Tensor, targets: torch.Tensor, spans) -> tuple[torch.Tensor, list, list]:
    """The model's final hidden states, without a gradient, on each PSM example read left to right:
    its segment up to the prefix's end, then the middle's first n - 1 tokens (the suffix and the
    <|fim_middle|> cut out). Returns (hidden [N, L, D], rows, positions) where the listed positions
    are those that predict the middle's tokens, in the order of `spans`."""
    views = [torch.cat([inputs[r, s:e + 1], targets[r, m:m + n - 1]]) for r, s, e, m, n in spans]
    length = max(len(v) for v in views)
    tokens = inputs.new_zeros(len(views), length)
    segments = torch.zeros_like(tokens)
    for i, view in enumerate(views):
        tokens[i, :len(view)] = view
        segments[i, :len(view)] = 1
    with torch.no_grad():
        hidden = core(tokens, segment_ids=attention_segments(segments), return_hidden=True)
    rows = [i for i, (_, _, _, _, n) in enumerate(spans) for _ in range(n)]
    positions = [e - s + j for _, s, e, _, n in spans for j in range(n)]
    return hidden, rows, positions


def lm_loss_sum_with_prefix_distill(model, batch: dict[str, torch.Tensor], weight: float,
                                    ids: tuple[int, int, int], excluded: list[int], weights=None,
                                    tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`lm_loss_sum` plus `weight` x KL(left to right || PSM) summed over the first `tokens` tokens
    of every PSM middle: the KL divergence from the model's own next-token distribution when it
    reads the example left to right (prefix, then middle; without a gradient, the sentinels in
    `excluded` removed) to its distribution in PSM order. Returns (total, trained positions, the
    KL sum).

    PSM loses infilling to left to right on the middle's first two tokens, which have to be found
    behind the suffix (docs/experiments); the left-to-right distribution is the same model's best
    guess for them, a full distribution where the target gives one token. For the first token it
    is the distribution at the prefix's last token, in this very pass; later tokens need the
    prefix followed by the middle, a second pass without gradient over those views."""
    inputs, seg, targets, trained = shift(batch)
    loss_weights = trained if weights is None else trained * weights(inputs)
    core = getattr(model, "module", model)  # the Gemma inside a DDP wrapper
    hidden = model(inputs, segment_ids=attention_segments(seg), return_hidden=True)
    total, _ = core._loss(hidden, targets, loss_weights.float())  # forward's fused head and loss
    spans = psm_middle_spans(inputs, seg, targets, trained, ids, excluded, tokens)
    kl = hidden.new_zeros((), dtype=torch.float32)
    if spans:
        rows = [r for r, _, _, _, n in spans for _ in range(n)]
        student = [m + j for _, _, _, m, n in spans for j in range(n)]
        if tokens == 1:
            teacher = hidden[[r for r, *_ in spans], [e for _, _, e, _, _ in spans]]
        else:
            view_hidden, view_rows, view_positions = _left_to_right_hidden(core, inputs, targets, spans)
            teacher = view_hidden[view_rows, view_positions]
        kl = _kl_sum(core, teacher, hidden[rows, student], excluded)
    return total + weight * kl, trained.sum(), kl.detach()


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over the trained (response) positions of each row: [B], without a gradient.

    Through the model's fused head, so the [B, T, vocab] logits never exist: for DPO at Gemma's
    262k vocabulary they would be 17 GB in float32 for 8 rows of 2,048 tokens."""
    inputs, seg, targets, trained = shift(batch)
    with torch.no_grad():
        _, nll = model(inputs, segment_ids=attention_segments(seg), targets=targets, loss_weights=trained)
    return -(nll.float() * trained).sum(dim=1)


def weighted_token_loss(model, batch: dict[str, torch.Tensor], row_weights: torch.Tensor) -> torch.Tensor:
    """sum over rows r and trained positions t of row_weights[r] * nll[r, t], through the fused head:
    with row_weights = -dL/d(log p of row r), its gradient is the gradient of any loss L of the rows'
    log-probabilities (`sequence_logprob`)."""
    inputs, seg, targets, trained = shift(batch)
    total, _ = model(inputs, segment_ids=attention_segments(seg), targets=targets,
                     loss_weights=trained * row_weights[:, None])
    return total


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct Preference Optimization (Rafailov et al. 2023), per pair: -log sigmoid(beta * margin).

    The margin is how much more the policy prefers the chosen response than the reference does.
    Returns the per-pair losses [B] and diagnostics (implicit rewards and preference accuracy).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    stats = {
        "reward_chosen": chosen_reward.detach().mean(),
        "reward_rejected": rejected_reward.detach().mean(),
        "reward_accuracy": (chosen_reward > rejected_reward).float().detach().mean(),
    }
    return losses, stats
