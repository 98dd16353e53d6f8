import math

import torch

from codegemma.train.optim import WarmupCosine, build, param_groups
from codegemma.train.recipe import OptimSection


def test_warmup_then_cosine_to_floor():
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == 0.1 and f(9) == 1.0
    assert math.isclose(f(60), 0.1 + 0.9 * 0.5)  # half way through the decay
    assert math.isclose(f(110), 0.1) and math.isclose(f(500), 0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_weight_decay_on_norms_and_embeddings():
    from codegemma.config import preset
    from codegemma.model import Gemma

    model = Gemma(preset("tiny-gemma"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert any("embed" in names[id(p)] for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_scheduler_state_round_trips():
    model = torch.nn.Linear(4, 4)
    opt, sched = build(model, OptimSection(lr=1.0, warmup_steps=3), total_steps=10)
    for _ in range(4):
        opt.step()
        sched.step()
    opt2, sched2 = build(model, OptimSection(lr=1.0, warmup_steps=3), total_steps=10)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
