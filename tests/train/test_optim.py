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


def _after(steps: int, cfg: OptimSection, total: int):
    model = torch.nn.Linear(4, 4)
    opt, sched = build(model, cfg, total_steps=total)
    for _ in range(steps):
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_a_resumed_run_follows_its_own_recipe():
    """Loading a checkpoint's optimizer state brings its hyperparameters and schedule along; a run
    resumed with another train.steps or optim.lr goes on with its own, at the saved step."""
    from codegemma.train.optim import continue_at, settings

    saved_model, saved_opt, saved_sched = _after(5, OptimSection(lr=1.0, warmup_steps=2, weight_decay=0.1), 10)
    state, steps = saved_opt.state_dict(), saved_sched.state_dict()["last_epoch"]
    cfg = OptimSection(lr=0.5, warmup_steps=2, weight_decay=0.2, betas=(0.8, 0.9))
    opt, sched = build(saved_model, cfg, total_steps=20)
    own = settings(opt)
    opt.load_state_dict(state)
    continue_at(opt, sched, own, steps)
    want = 0.5 * WarmupCosine(2, 20, cfg.min_lr_ratio)(5)
    assert sched.get_last_lr() == [want, want] and [g["lr"] for g in opt.param_groups] == [want, want]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    assert opt.state_dict()["state"][0]["step"] == 5  # the moments and step counts are the checkpoint's
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == 0.5 * WarmupCosine(2, 20, cfg.min_lr_ratio)(6)

    # the same recipe: exactly the rates the uninterrupted run goes on with
    same_cfg = OptimSection(lr=1.0, warmup_steps=2, weight_decay=0.1)
    opt, sched = build(saved_model, same_cfg, total_steps=10)
    own = settings(opt)
    opt.load_state_dict(state)
    continue_at(opt, sched, own, steps)
    assert sched.get_last_lr() == saved_sched.get_last_lr()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in saved_opt.param_groups]
    saved_opt.step(), saved_sched.step(), opt.step(), sched.step()
    assert sched.get_last_lr() == saved_sched.get_last_lr()
