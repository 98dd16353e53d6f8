"""Weight-only int8/int4 layers: quantization error bounds, kernel paths, whole tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from codegemma.config import preset
from codegemma.engine import Engine, SamplingParams
from codegemma.errors import CodegemmaError
from codegemma.model import Gemma
from codegemma.quant import (DECODE_ROWS, GroupLinear, Int8Table, dequantize_groups, quantize_groups, quantize_model,
                             quantized_tensors, weight_bytes_per_token)


def tiny(name="tiny-gemma3", seed=0):
    torch.manual_seed(seed)
    model = Gemma(preset(name))
    model.init_weights(std=0.2)
    return model.eval()


@pytest.mark.parametrize("bits", [4, 8])
def test_group_codes_are_within_half_a_step_and_match_the_kernel(bits):
    torch.manual_seed(1)
    w = torch.randn(128, 96) * 2 + 0.5
    packed, sz = quantize_groups(w, bits)
    dense = dequantize_groups(packed, sz, bits // 4, dtype=torch.float32)
    groups = w.view(128, 3, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / (2 ** bits - 1)
    assert ((dense - w).abs().view(128, 3, 32) <= step[..., None] * 0.51).all()
    x = torch.randn(2, 96).bfloat16()
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz).float()
    summed = kernel.view(2, bits // 4, 128).sum(1)  # the planes add up to the weight
    torch.testing.assert_close(summed, x.float() @ dense.T, rtol=2e-2, atol=0.3)
    half = dequantize_groups(packed, sz, bits // 4, rows=slice(64, 128), dtype=torch.float32)
    assert torch.equal(half, dense[64:])


def test_int8_table_matches_q8_0_codes_exactly():
    codes = torch.randint(-127, 128, (64, 64)).float()
    codes[:, 0], codes[:, 32] = 127, -127  # each block uses its full range, as GGUF's Q8_0 does
    scales = torch.rand(64, 2) + 0.1
    weight = (codes.view(64, 2, 32) * scales[..., None]).view(64, 64)
    table = Int8Table.from_weight(weight)
    assert torch.equal(table.qweight.float(), codes)
    torch.testing.assert_close(table(torch.tensor([[3, 7]])), weight[[3, 7]][None])


def test_shapes_the_kernel_cannot_pack_are_clear_errors():
    with pytest.raises(CodegemmaError, match="rows by 64, got 100x64"):
        quantize_groups(torch.randn(100, 64), 4)
    with pytest.raises(CodegemmaError, match="bits"):
        quantize_groups(torch.randn(64, 64), 6)


@pytest.mark.parametrize("bits", [4, 8])
def test_few_and_many_rows_take_different_kernels_and_agree(bits):
    torch.manual_seed(2)
    layer = GroupLinear.from_weight(torch.randn(192, 64), bits)
    x = torch.randn(DECODE_ROWS + 5, 64)
    many = layer(x)  # dequantize + bf16 GEMM
    few = torch.cat([layer(x[i:i + 1]) for i in range(x.shape[0])])  # the int4 kernel
    assert many.dtype == torch.float32 and many.shape == (x.shape[0], 192)
    torch.testing.assert_close(few, many, rtol=2e-2, atol=0.15)  # bfloat16 activations
    torch.testing.assert_close(many, x @ layer.dequantize(dtype=torch.float32).T, rtol=2e-2, atol=0.15)  # bfloat16 activations


def test_many_rows_give_the_bf16_product_with_or_without_bf16_arithmetic(monkeypatch):
    """A prompt's bf16 product runs as bf16 where the CPU multiplies bf16 in hardware and in float32
    on bf16 operands elsewhere: the same bf16 result up to the order of the sums."""
    from codegemma import bf16_matmuls

    torch.manual_seed(3)
    layer = GroupLinear.from_weight(torch.randn(192, 64), 8)
    x = torch.randn(DECODE_ROWS + 5, 64)
    outputs = []
    for native in (True, False):
        monkeypatch.setattr(bf16_matmuls, "native_on_this_cpu", lambda native=native: native)
        outputs.append(layer(x))
    want = (x.bfloat16().double() @ layer.dequantize().double().T).bfloat16().float()
    for got in outputs:
        assert torch.equal(got, got.bfloat16().float())  # rounded to bf16, as a bf16 product is
        assert ((got - want).abs() <= want.abs() * 2 ** -7 + 1e-6).all()  # within one bf16 step


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_model_tracks_the_float_model(dtype):
    model = tiny()
    quant = quantize_model(copy.deepcopy(model), dtype)
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        ref, got = model(ids), quant(ids)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), got.flatten(1)).min()
    assert cos > (0.995 if dtype == "int8" else 0.95), cos  # off the top, logits are int4
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
    assert agree > (0.97 if dtype == "int8" else 0.7), agree
    assert quant.compute_dtype == torch.float32 and quant.dtype_name == dtype
    # float32: 4 bytes a weight; int8: 1 + 1/8 (scales and zeros); int4: 1/2 + 1/16
    assert weight_bytes_per_token(quant) < weight_bytes_per_token(model) / (3 if dtype == "int8" else 4.5)


def test_head_picks_the_float32_argmax_of_its_int8_table():
    quant = quantize_model(tiny(), "int4")
    hidden = torch.randn(3, 5, 64)
    exact = hidden @ quant.lm_head.table.rows(torch.arange(512)).T
    logits = quant.logits(hidden)
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_engine_is_consistent_with_full_recompute(dtype):
    quant = quantize_model(tiny(), dtype)
    prompt = torch.randint(0, 512, (20,)).tolist()
    out = Engine(quant).generate(prompt, SamplingParams(max_new_tokens=12)).ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(quant(torch.tensor([ids]))[0, -1].argmax()))
    # the engine decodes through the int kernels, the recompute prefills through bf16 GEMMs:
    # rounding differs slightly, so allow a late divergence
    assert out[:6] == ids[len(prompt):len(prompt) + 6]


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_rebuilding_from_saved_tensors_gives_identical_logits(dtype):
    quant = quantize_model(tiny(), dtype)
    tensors = quantized_tensors(quant)
    assert not any(k.startswith("lm_head.table.") for k in tensors)
    with torch.device("meta"):
        shell = Gemma(preset("tiny-gemma3"))
    rebuilt = quantize_model(shell, dtype, tensors=tensors)
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        assert torch.equal(quant(ids), rebuilt(ids))
    with torch.device("meta"):
        shell = Gemma(preset("tiny-gemma3"))
    del tensors["norm.weight"]
    with pytest.raises(CodegemmaError, match="norm.weight"):
        quantize_model(shell, dtype, tensors=tensors)


def test_unknown_quantized_dtype_is_a_clear_error():
    with pytest.raises(CodegemmaError, match="int3"):
        quantize_model(tiny(), "int3")
