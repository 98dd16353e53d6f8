import math

import pytest

from codegemma.eval.metrics import edit_similarity, exact_match, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    # Probability that a random k-subset of n samples holds at least one of the c correct ones.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n,c,k", [(1, 1, 1), (1, 0, 1), (10, 3, 1), (10, 3, 10), (20, 5, 10), (200, 7, 100),
                                   (200, 0, 100), (200, 200, 1)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    results = {"p": [True] * c + [False] * (n - c)}
    assert pass_at_k(results, ks=[k])[f"pass@{k}"] == pytest.approx(brute_force_pass_at_k(n, c, k))


def test_pass_at_1_is_the_mean_pass_rate_and_large_k_needs_enough_samples():
    results = {"a": [True, False, False, False], "b": [True, True, False, False]}
    scores = pass_at_k(results)
    assert scores == {"pass@1": pytest.approx((0.25 + 0.5) / 2)}
    assert pass_at_k({}) == {}


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match("    x = 1\n", "    x = 1")
    assert not exact_match("x = 2", "x = 1")


def test_edit_similarity_bounds_and_value():
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("abcd", "abce") == pytest.approx(0.75)
