"""GGUF block-quantized tensors as integer codes with a scale and offset per group.

A GGUF block defines its float values as scale * code - offset for small groups of a row (32
values; 16 for Q6_K). Kept in that form, a float32 weight takes ~1.1-1.3 bytes instead of 4 and
the block kernel (codegemma.kernels) multiplies by exactly the same float32 weights. Codes come
from the `gguf` package's own dequantizer run on copies of the blocks whose scale fields are set
to 1 and whose offset fields to 0; the per-group scales and offsets are read from the fields.
Every tensor is then checked: scale * code - offset, computed exactly, must round to the float32
value the loader uses for every weight, or the tensor is not converted. It is that value exactly,
except where a K-quant's d * scale * code - dmin * min needs more than float32's 24 bits: the
loader's float32 weight is then the rounding of the block's value, half a unit in the last place
away (in the default model, no weight is).
"""

from __future__ import annotations

import numpy as np

ONE_F16 = np.array([1.0], dtype=np.float16).view(np.uint8)  # the two bytes of a float16 1.0
# Q4_K/Q5_K pack eight 6-bit (scale, min) pairs in 12 bytes; these bytes give scale 1, min 0
UNIT_SCALES_K = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def _codes(blocks: np.ndarray, kind, edit) -> np.ndarray:
    """The dequantizer's output on edited copies of the blocks: the integer codes."""
    from gguf import quants

    unit = blocks.copy()
    edit(unit)
    return quants.dequantize(unit, kind).reshape(blocks.shape[0], -1)


def _simple(blocks, kind, with_min: bool):
    """Q4_0/Q5_0 (value = d * code) and Q4_1/Q5_1 (value = d * code + m): one group per block."""
    d = _f16(blocks, 0)
    m = _f16(blocks, 2) if with_min else None

    def edit(unit):
        unit[:, 0:2] = ONE_F16
        if with_min:
            unit[:, 2:4] = 0

    return _codes(blocks, kind, edit), d[:, None], None if m is None else -m[:, None]


def _k_quant(blocks, kind):
    """Q4_K/Q5_K: value = d * scale_j * code - dmin * min_j for each of 8 groups of 32."""
    from gguf import quants

    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())

    def edit(unit):
        unit[:, 0:2] = ONE_F16
        unit[:, 2:4] = 0
        unit[:, 4:16] = UNIT_SCALES_K

    return _codes(blocks, kind, edit), d[:, None] * sc.astype(np.float32), dmin[:, None] * mn.astype(np.float32)


def _q6_k(blocks, kind):
    """Q6_K: value = d * scale_j * code for each of 16 groups of 16."""
    d = _f16(blocks, 208)
    sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)

    def edit(unit):
        unit[:, 192:208] = 1
        unit[:, 208:210] = ONE_F16

    return _codes(blocks, kind, edit), d[:, None] * sc, None


def _q8_0(blocks, kind):
    """Q8_0: value = d * code with the codes stored as plain bytes (the default model's 168 M-weight
    embedding: reading them directly saves seconds over the dequantizer)."""
    return blocks[:, 2:].copy().view(np.int8), _f16(blocks, 0)[:, None], None


def _readers():
    from gguf import GGMLQuantizationType as T

    return {
        T.Q8_0: _q8_0, T.Q4_0: lambda b, k: _simple(b, k, False),
        T.Q5_0: lambda b, k: _simple(b, k, False), T.Q4_1: lambda b, k: _simple(b, k, True),
        T.Q5_1: lambda b, k: _simple(b, k, True), T.Q4_K: _k_quant, T.Q5_K: _k_quant, T.Q6_K: _q6_k,
    }


def block_codes(tensor, weight: np.ndarray) -> dict[str, np.ndarray] | None:
    """{"codes": int8 [N, K], "scale": float32 [N, K/G], "offset" (if any): float32 [N, K/G]} for a
    GGUF tensor whose float32 values (`weight`, [N, K], as loaded) they reproduce exactly; None
    for other tensor types, or if the check fails."""
    import gguf

    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    reader = _readers().get(kind)
    if reader is None or weight.ndim != 2:
        return None
    n, k = weight.shape
    block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
    blocks = np.asarray(tensor.data).reshape(-1, type_size)
    codes, scale, offset = reader(blocks, kind)
    group = codes.shape[1] // scale.shape[1]
    if k % group or codes.size != weight.size or np.abs(codes).max() > 127:
        return None
    codes = codes.reshape(n, k)
    scale = scale.reshape(n, k // group)
    offset = None if offset is None else offset.reshape(n, k // group)
    if not _reproduces(codes, scale, offset, weight):
        return None
    out = {"codes": codes.astype(np.int8), "scale": np.ascontiguousarray(scale, dtype=np.float32)}
    if offset is not None:
        out["offset"] = np.ascontiguousarray(offset, dtype=np.float32)
    return out


def _reproduces(codes, scale, offset, weight, rows: int = 8192) -> bool:
    """float64 holds every product and difference exactly; rounded to float32 they must give the
    weights. In slices of rows: a float64 copy of a whole embedding would take gigabytes."""
    n, k = weight.shape
    group = k // scale.shape[1]
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        value = codes[part].astype(np.float64).reshape(-1, k // group, group) * scale[part, :, None]
        if offset is not None:
            value -= offset[part, :, None]
        if not np.array_equal(value.reshape(-1, k).astype(np.float32), weight[part]):
            return False
    return True
