"""Weighted mixture of sources by tokens (CodeGemma 7B: 80% code / 20% natural language; 2B: 100% code).

Each source's samples are shuffled with a seed; then the next sample always comes from the source
furthest below its share (taken tokens / weight smallest; ties by source name). The plan stops when
the source whose turn it is runs out, so realised shares match the weights to within one sample;
with `repeat`, exhausted sources start over (upsampling) until `total_tokens` is reached.
"""

from __future__ import annotations

import random

from codegemma.errors import CodegemmaError


def plan_mixture(lengths: dict[str, list[int]], weights: dict[str, float], seed: int = 0,
                 total_tokens: int | None = None, repeat: bool = False) -> list[tuple[str, int]]:
    """(source, sample index) in training order."""
    active = sorted(name for name, w in weights.items() if w > 0 and lengths.get(name))
    if not active:
        raise CodegemmaError("mixture: no source with a positive weight has any sample")
    if repeat and total_tokens is None:
        raise CodegemmaError("mixture: repeat needs total_tokens, or it would never stop")
    total_weight = sum(weights[n] for n in active)
    share = {n: weights[n] / total_weight for n in active}
    orders = {}
    for name in active:
        order = list(range(len(lengths[name])))
        random.Random(f"{seed}:{name}").shuffle(order)
        orders[name] = order
    position = {n: 0 for n in active}
    taken = {n: 0 for n in active}
    plan: list[tuple[str, int]] = []
    tokens = 0
    while total_tokens is None or tokens < total_tokens:
        name = min(active, key=lambda n: (taken[n] / share[n], n))
        if position[name] >= len(orders[name]):
            if not repeat:
                break
            position[name] = 0
        index = orders[name][position[name]]
        position[name] += 1
        plan.append((name, index))
        taken[name] += lengths[name][index]
        tokens += lengths[name][index]
    return plan


def realised_shares(plan: list[tuple[str, int]], lengths: dict[str, list[int]]) -> dict[str, float]:
    tokens: dict[str, int] = {}
    for name, index in plan:
        tokens[name] = tokens.get(name, 0) + lengths[name][index]
    total = sum(tokens.values()) or 1
    return {name: n / total for name, n in sorted(tokens.items())}
