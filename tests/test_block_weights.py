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


def blocked_model(name: str = "tiny-gemma3"):
    """A tiny model whose weights are exactly block values, and those blocks (not yet attached)."""
    torch.manual_seed(0)
    model = Gemma(preset(name)).eval()
    tensors = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.dim() == 2 and p.shape[1] % 32 == 0:
            # offsets (as in Q4_K) for the MLP, none (as in Q5_0) for attention and the head
            codes, scale, offset, dense = block_weight(*p.shape, 32, "mlp" in name, seed=i)
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
    # one call for q/k/v, o, gate/up and down in each layer, and one for the head
    assert all(isinstance(b.self_attn.qkv_proj, block_weights.FusedBlocks) for b in model.layers)
    assert len(calls) == 4 * len(model.layers) + 1
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


def test_fused_layers_fall_back_to_each_layer(monkeypatch):
    model, tensors = blocked_model()
    block_weights.attach(model, tensors)
    attn = model.layers[0].self_attn
    x = torch.randn(1, 1, attn.q_proj.in_features)
    with torch.no_grad():
        fused = attn.qkv_proj(x)
        attn.k_proj.weight.add_(1.0)  # k changed: its blocks are stale, so the fused call is too
        calls = count_kernel_calls(monkeypatch)
        after = attn.qkv_proj(x)
    assert len(calls) == 2  # q and v still through the kernel, k in float32
    q_width = attn.q_proj.out_features
    assert torch.equal(after[..., :q_width], fused[..., :q_width])
    assert torch.allclose(after[..., q_width:q_width + attn.k_proj.out_features], x @ attn.k_proj.weight.T)


def test_mismatched_blocks_are_refused():
    model, tensors = blocked_model()
    name = "layers.0.mlp.up_proj.weight"
    tensors[f"{name}.codes"] = tensors[f"{name}.codes"][:-1]
    with pytest.raises(ValueError, match="do not match"):
        block_weights.attach(model, tensors)
