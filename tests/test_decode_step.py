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
        for got_kv, want_kv in ((got_cache.k[layer], want_cache.k[layer]), (got_cache.v[layer], want_cache.v[layer])):
            assert (got_kv - want_kv).abs().max() <= 1e-4 * want_kv.abs().max(), (layer, (got_kv - want_kv).abs().max())
    assert torch.equal(got_cache.pos[got_cache.sizes[0]], want_cache.pos[want_cache.sizes[0]])


def batch_through_c_layers(model, tensors, prompts, params, monkeypatch):
    """Attach the C layers and generate a batch: (tokens of each row, rows in each C-layer call)."""
    block_weights.attach(model, tensors)
    rows = []
    step = model._decode_step
    real = step.__call__
    monkeypatch.setattr(type(step), "__call__", lambda self, *a: rows.append(a[0].shape[0]) or real(*a))
    return [r.ids for r in Engine(model).generate_batch(prompts, params)], rows


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_batched_decoding_with_left_padding(name, monkeypatch):
    """Rows of different lengths, left-padded, decoded together: the same greedy tokens as the
    PyTorch layers, and as each prompt alone."""
    model, tensors = blocked_model(name)
    prompts = [[2, 17, 99, 4, 250, 31, 7, 8, 9, 10, 11], [2, 5], [2, 300, 301, 302, 303, 6]]
    params = SamplingParams(max_new_tokens=20)
    want = [r.ids for r in Engine(model).generate_batch(prompts, params)]
    got, calls = batch_through_c_layers(model, tensors, prompts, params, monkeypatch)
    assert calls and set(calls) == {3}
    assert got == want
    assert got == [Engine(model).generate(p, params).ids for p in prompts]


def test_rows_that_stop_early_leave_the_c_batch(monkeypatch):
    """Rows stop at different steps and leave the batch: the C layers then run on the rows left,
    and every row's tokens are those of the PyTorch layers and of the prompt alone."""
    model, tensors = blocked_model("tiny-gemma3")
    prompts = [[2, 17, 99, 4, 250, 31, 7, 8, 9, 10, 11], [2, 5], [2, 300, 301, 302, 303, 6], [2, 40, 41]]
    free = [r.ids for r in Engine(model).generate_batch(prompts, SamplingParams(max_new_tokens=30))]

    def stop_lengths(token):  # how many tokens each row keeps when `token` stops it
        return [row.index(token) if token in row else len(row) for row in free]

    # a stop token that ends some rows after a few steps while others go on
    stop = next(t for row in free for t in row if min(stop_lengths(t)) >= 1 and len(set(stop_lengths(t))) > 1)
    params = SamplingParams(max_new_tokens=30, stop_ids={stop})
    want = [r.ids for r in Engine(model).generate_batch(prompts, params)]
    got, rows = batch_through_c_layers(model, tensors, prompts, params, monkeypatch)
    assert len(set(rows)) > 1 and rows == sorted(rows, reverse=True)  # the batch shrank as rows stopped
    assert got == want == [Engine(model).generate(p, params).ids for p in prompts]


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
        assert step.usable(token, torch.tensor([[3]]), one, None, None)  # explicit positions
        assert step.usable(torch.tensor([[1], [2]]), torch.tensor([[4], [7]]), KVCache(model.config, 2, 16), None, None)
        assert not step.usable(torch.tensor([[1], [2]]), None, one, None, None)  # rows != the cache's
        assert not step.usable(torch.tensor([[1, 2]]), None, one, None, None)  # two tokens: a prompt
        assert not step.usable(token, torch.tensor([[-1]]), one, None, None)  # a padding query
        assert not step.usable(token, None, None, None, None)  # no cache
        model.layers[0].input_layernorm.weight.add_(0.5)  # e.g. an optimizer step
        assert not step.usable(token, None, one, None, None)


def test_lora_adapters_are_not_bypassed():
    """peft wraps q_proj etc.; the fused kernel calls and the C layers must then step aside."""
    from codegemma.train.lora import apply_lora
    from codegemma.train.recipe import LoraSection

    ids = [2, 5, 9, 14, 3, 7, 11]
    model, tensors = blocked_model("tiny-gemma3")
    block_weights.attach(model, tensors)
    base, _ = decode(model, ids, 3)
    model = apply_lora(model, LoraSection(enabled=True, r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    got, _ = decode(model, ids, 3)
    plain, _ = blocked_model("tiny-gemma3")  # the same weights, no blocks attached
    plain = apply_lora(plain, LoraSection(enabled=True, r=4))
    plain.load_state_dict(model.state_dict())
    want, _ = decode(plain, ids, 3)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (got - base).abs().max() > 1e-2 * base.abs().max()  # the adapters do change the output


def test_a_copied_model_runs_without_the_original_pointers():
    import copy
    import pickle

    model, tensors = blocked_model("tiny-gemma3")
    block_weights.attach(model, tensors)
    ids = [2, 5, 9, 14, 3]
    want, _ = decode(model, ids, 2)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._decode_step is None
        got, _ = decode(clone, ids, 2)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
