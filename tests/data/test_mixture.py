import pytest

from codegemma.data.mixture import plan_mixture, realised_shares
from codegemma.errors import CodegemmaError


def test_shares_follow_weights_and_plan_is_seeded():
    lengths = {"code": [100] * 500, "text": [50] * 500}
    plan = plan_mixture(lengths, {"code": 0.8, "text": 0.2}, seed=1)
    shares = realised_shares(plan, lengths)
    assert abs(shares["code"] - 0.8) < 0.01
    assert plan == plan_mixture(lengths, {"code": 0.8, "text": 0.2}, seed=1)
    assert plan != plan_mixture(lengths, {"code": 0.8, "text": 0.2}, seed=2)
    assert len({i for name, i in plan if name == "code"}) == sum(1 for name, _ in plan if name == "code")


def test_all_code_and_repeat():
    lengths = {"code": [10] * 5, "text": [10] * 5}
    plan = plan_mixture(lengths, {"code": 1.0, "text": 0.0})
    assert sorted(i for _, i in plan) == list(range(5)) and {n for n, _ in plan} == {"code"}
    repeated = plan_mixture(lengths, {"code": 1.0}, total_tokens=120, repeat=True)
    assert sum(10 for _ in repeated) == 120
    with pytest.raises(CodegemmaError, match="repeat needs"):
        plan_mixture(lengths, {"code": 1.0}, repeat=True)
    with pytest.raises(CodegemmaError, match="no source"):
        plan_mixture(lengths, {"code": 0.0})
