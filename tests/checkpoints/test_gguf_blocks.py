"""GGUF blocks as codes, scales and offsets (codegemma.checkpoints.gguf_blocks): exactly the
float32 values the loader uses, or nothing."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader

from codegemma.checkpoints import gguf_blocks, gguf_file

from .gguf_fixtures import write_gguf
from .test_gguf import QUANTIZED, random_state

BLOCK_TYPES = {Q.Q8_0: 32, Q.Q4_0: 32, Q.Q5_0: 32, Q.Q4_1: 32, Q.Q5_1: 32, Q.Q4_K: 32, Q.Q5_K: 32, Q.Q6_K: 16}


def tensors_of(tmp_path, kind):
    path = tmp_path / f"{kind.name}.gguf"
    write_gguf(path, random_state(), types={name: kind for name in QUANTIZED})
    reader = GGUFReader(str(path))
    return path, [t for t in reader.tensors if Q(t.tensor_type) == kind]


@pytest.mark.parametrize("kind", list(BLOCK_TYPES), ids=lambda k: k.name)
def test_codes_reproduce_every_dequantized_value(tmp_path, kind):
    path, tensors = tensors_of(tmp_path, kind)
    assert len(tensors) == len(QUANTIZED)
    for tensor in tensors:
        weight = gguf_file.dequantize(tensor, path)
        blocks = gguf_blocks.block_codes(tensor, weight)
        assert blocks is not None, tensor.name
        codes, scale = blocks["codes"], blocks["scale"]
        assert codes.dtype == np.int8 and codes.shape == weight.shape
        assert scale.shape == (weight.shape[0], weight.shape[1] // BLOCK_TYPES[kind])
        value = codes.astype(np.float64).reshape(*scale.shape, -1) * scale[..., None]
        if "offset" in blocks:
            value -= blocks["offset"][..., None]
        value = value.reshape(weight.shape)
        assert np.array_equal(value.astype(np.float32), weight)
        if kind not in (Q.Q4_K, Q.Q5_K):  # only K-quants' d * sc * q - dmin * m may need rounding
            assert np.array_equal(value, weight)


def test_a_value_the_codes_do_not_give_is_refused(tmp_path):
    path, tensors = tensors_of(tmp_path, Q.Q8_0)
    weight = gguf_file.dequantize(tensors[0], path).copy()
    weight[3, 5] = np.nextafter(weight[3, 5], np.float32(np.inf))  # one ulp off
    assert gguf_blocks.block_codes(tensors[0], weight) is None


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.Q2_K, Q.Q3_K, Q.IQ4_NL])
def test_other_types_have_no_block_form(tmp_path, kind):
    path, tensors = tensors_of(tmp_path, kind)
    for tensor in tensors:
        assert gguf_blocks.block_codes(tensor, gguf_file.dequantize(tensor, path)) is None
