"""Float32 layers that decode through their block form (codegemma.block_weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codegemma import block_weights, kernels
from codegemma.config import preset
from codegemma.model import Gemma

from .test_kernels import block_weight

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the block kernel")


def blocked_model():
    """A tiny model whose weights are exactly block values, with the blocks attached."""
    torch.manual_seed(0)
    model = Gemma(preset("tiny-gemma3")).eval()
    tensors = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.dim() == 2 and p.shape[1] % 32 == 0:
            codes, scale, offset, dense = block_weight(*p.shape, 32, i % 2 == 1, seed=i)
            with torch.no_grad():
                p.copy_(dense)
            tensors.update({f"{name}.codes": codes, f"{name}.scale": scale})
            if offset is not None:
                tensors[f"{name}.offset"] = offset
    return model, tensors


def count_kernel_calls(monkeypatch):
    calls = []
    real = kernels.block_matmul
    monkeypatch.setattr(kernels, "block_matmul", lambda *a: calls.append(1) or real(*a))
    return calls


def test_attached_model_computes_what_the_plain_model_computes(monkeypatch):
    model, tensors = blocked_model()
    ids = torch.tensor([[2, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        want = model(ids)
        keys = set(model.state_dict())
        attached = block_weights.attach(model, tensors)
        calls = count_kernel_calls(monkeypatch)
        got = model(ids)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert attached == len(linears) + 1  # every linear layer and the tied head
    assert all(isinstance(m, block_weights.BlockLinear) for m in linears)
    assert set(model.state_dict()) == keys  # same parameters, same names
    assert len(calls) == attached  # one call per layer and one for the head
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_long_inputs_and_training_use_the_float32_weights(monkeypatch):
    model, tensors = blocked_model()
    block_weights.attach(model, tensors)
    calls = count_kernel_calls(monkeypatch)
    with torch.no_grad():
        model(torch.arange(kernels.MAX_ROWS + 1)[None])  # a prompt: more rows than the kernel takes
    assert calls == []
    calls.clear()
    model.train()
    loss = model(torch.tensor([[2, 5, 9]])).logsumexp(-1).mean()
    loss.backward()
    assert calls == []
    assert model.layers[0].mlp.up_proj.weight.grad is not None


def test_a_changed_weight_drops_its_blocks(monkeypatch):
    model, tensors = blocked_model()
    block_weights.attach(model, tensors)
    layer = model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.weight.mul_(2.0)  # e.g. an optimizer step
        x = torch.randn(1, layer.in_features)
        calls = count_kernel_calls(monkeypatch)
        assert torch.equal(layer(x), x @ layer.weight.T)
    assert calls == []
    model.to(torch.bfloat16)  # a cast: the head's float32 blocks no longer describe it
    with torch.no_grad():
        model(torch.tensor([[2, 5]]))
    assert calls == []


def test_mismatched_blocks_are_refused():
    model, tensors = blocked_model()
    name = "layers.0.mlp.up_proj.weight"
    tensors[f"{name}.codes"] = tensors[f"{name}.codes"][:-1]
    with pytest.raises(ValueError, match="do not match"):
        block_weights.attach(model, tensors)
