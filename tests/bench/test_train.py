"""bench/train.py, the training throughput comparison with transformers (docs/experiments): both
sides train the same model, or it reports no ratio."""

import pytest
import torch

from codegemma.config import preset


def _bench_train():
    """bench/train.py (the throughput comparison of docs/experiments), imported from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model, names, sequential", [
    ("tiny-gemma", ["transformers", "ours"], False),  # transformers first: it crashed on weights of None
    ("tiny-gemma3", ["transformers"], True),  # transformers alone
    ("tiny-gemma2", ["ours", "transformers"], False),  # soft-capping: transformers refused SDPA
    ("tiny-gemma3", ["ours", "transformers"], True),
])
def test_the_training_benchmark_times_the_same_model_on_both_sides(model, names, sequential):
    """Both runners get the same weights in any order, and transformers' model computes the same
    logits as ours (what makes the speed ratio mean anything), for every family."""
    from types import SimpleNamespace

    bench = _bench_train()
    torch.manual_seed(0)
    cfg = preset(model)
    batch = torch.randint(0, cfg.vocab_size, (2, 17))
    args = SimpleNamespace(device="cpu", compile=False, precision="float32", sequential=sequential, rounds=2,
                           steps=1)
    seconds, ratio, diff = bench.time_runners(names, cfg, batch, args)
    assert sorted(seconds) == sorted(names) and all(s > 0 for s in seconds.values())
    if len(names) == 2:
        assert diff is not None and diff < 1e-4 and ratio > 0
    else:
        assert diff is None and ratio is None


def test_the_training_benchmark_refuses_models_that_differ():
    bench = _bench_train()
    logits = torch.randn(1, 8, 32)
    assert bench.logit_difference({"ours": logits, "transformers": logits.clone()}) == 0.0
    with pytest.raises(SystemExit, match="logits differ"):
        bench.logit_difference({"ours": logits, "transformers": logits + 0.5})
    with pytest.raises(SystemExit, match="logits differ"):
        bench.logit_difference({"ours": logits, "transformers": torch.full_like(logits, float("nan"))})


def test_the_training_benchmark_refuses_weights_transformers_leaves_out():
    """load_state_dict(strict=False) is there for the tied head only: a weight left out used to
    leave transformers' model partly random without a word."""
    bench = _bench_train()
    cfg = preset("tiny-gemma3")
    state = bench.ours(cfg, None)[0].state_dict()
    bench.theirs(cfg, state)  # all taken (the head is the embedding)
    del state["layers.0.self_attn.q_norm.weight"]
    with pytest.raises(SystemExit, match=r"missing \['model.layers.0.self_attn.q_norm.weight'\]"):
        bench.theirs(cfg, state)
