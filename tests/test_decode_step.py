"""One-token decode steps through the C decoder layer (codegemma.decode_step) against the PyTorch
layers, for every family, through the KV cache and past the sliding window."""

from __future__ import annotations

import pytest
import torch

from codegemma import block_weights, kernels
from codegemma.engine import Engine, SamplingParams
from codegemma.kv_cache import KVCache

from .test_block_weights import blocked_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the kernels")

FAMILIES = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]


def decode(model, ids, prompt_len):
    """Logits of every decoded position: the prompt in one forward, then one token at a time."""
    cache = KVCache(model.config, 1, len(ids), dtype=torch.float32)
    with torch.no_grad():
        out = [model(torch.tensor([ids[:prompt_len]]), cache=cache)[0, -1]]
        out += [model(torch.tensor([[t]]), cache=cache)[0, -1] for t in ids[prompt_len:-1]]
    return torch.stack(out), cache


@pytest.mark.parametrize("name", FAMILIES)
def test_c_layers_compute_what_the_pytorch_layers_compute(name, monkeypatch):
    model, tensors = blocked_model(name)
    block_weights.attach(model, tensors)
    step = model._decode_step
    assert step is not None
    calls = []
    real = step.__call__
    monkeypatch.setattr(type(step), "__call__", lambda self, *a: calls.append(1) or real(*a))
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    got, got_cache = decode(model, ids, 5)  # 34 decode steps: well past the window of 8
    assert len(calls) == 34
    model._decode_step = None
    want, want_cache = decode(model, ids, 5)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for layer in range(model.config.n_layers):  # the same keys and values in the same columns
        assert torch.allclose(got_cache.k[layer], want_cache.k[layer], rtol=1e-5, atol=1e-5)
        assert torch.allclose(got_cache.v[layer], want_cache.v[layer], rtol=1e-5, atol=1e-5)
    assert torch.equal(got_cache.pos[got_cache.sizes[0]], want_cache.pos[want_cache.sizes[0]])


def test_greedy_generation_and_prefix_reuse_are_unchanged():
    model, tensors = blocked_model("tiny-gemma3")
    prompts = [[2, 17, 99, 4, 250, 31, 7], [2, 17, 99, 4, 250, 31, 8, 9]]  # the second reuses a prefix
    params = SamplingParams(max_new_tokens=24)
    plain = Engine(model)
    want = [plain.generate(p, params).ids for p in prompts]
    block_weights.attach(model, tensors)
    fast = Engine(model)
    assert [fast.generate(p, params).ids for p in prompts] == want


def test_batches_training_and_changed_weights_use_the_pytorch_layers(monkeypatch):
    model, tensors = blocked_model("tiny-gemma3")
    block_weights.attach(model, tensors)
    step = model._decode_step
    one = KVCache(model.config, 1, 16, dtype=torch.float32)
    token = torch.tensor([[1]])
    assert not step.usable(token, None, one, None, None)  # gradients enabled: training
    with torch.no_grad():
        assert step.usable(token, None, one, None, None)
        assert not step.usable(torch.tensor([[1], [2]]), None, KVCache(model.config, 2, 16), None, None)
        assert not step.usable(token, torch.tensor([[3]]), one, None, None)  # explicit positions
        assert not step.usable(token, None, None, None, None)  # no cache
        model.layers[0].input_layernorm.weight.add_(0.5)  # e.g. an optimizer step
        assert not step.usable(token, None, one, None, None)
