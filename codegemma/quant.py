"""Weight-only quantized layers for CPU inference: int8 per output channel, int4 in groups.

Decoding one token reads every weight once, so its speed is set by the bytes of weights
(memory bandwidth); a prefill multiplies hundreds of tokens by each weight, so its speed is set
by arithmetic. Each layer keeps one compact weight and picks its kernel by the number of rows:
a few rows go to PyTorch's weight-only kernels, which read int8/int4 directly; many rows
dequantize the weight to bfloat16 (in slices, to bound memory) and use the bfloat16 GEMM.

Activations enter the kernels as bfloat16 and come out as bfloat16; the residual stream,
norms and attention stay in float32. Logits in bfloat16 are too coarse to pick the argmax
(steps of 0.125 near 20), so the head recomputes its best candidates in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codegemma.errors import CodegemmaError

QUANT_DTYPES = ("int8", "int4")
DECODE_ROWS = 4  # up to this many rows, the weight-only kernels beat dequantize + bf16 GEMM
DEQUANT_SLICE = 16384  # output rows dequantized at a time for many-row inputs (bounds temporary memory)
INT4_GROUP = 32
INT4_BLOCK_ROWS = 64  # the CPU int4 kernel packs weights in blocks of 64 output rows
HEAD_REFINE = 16  # candidates per row whose logits the head recomputes in float32


# ---- quantization ----------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (q [N, K] int8, scales [N] bfloat16), weight ~= q * scale."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 in groups of `group` columns, packed for `_weight_int4pack_mm_for_cpu`.

    Returns (packed [N, K/2] uint8, scales_and_zeros [K/group, N, 2] bfloat16) with
    weight ~= (q - 8) * scale + zero, q in 0..15 (the kernel's convention).
    """
    N, K = weight.shape
    if K % group or N % INT4_BLOCK_ROWS:
        raise CodegemmaError(f"int4 needs columns divisible by {group} and rows by {INT4_BLOCK_ROWS}, got {N}x{K}")
    w = weight.float().view(N, K // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12).to(torch.bfloat16).float()
    zero = (lo + 8.0 * scale).to(torch.bfloat16).float()
    q = torch.round((w - zero[..., None]) / scale[..., None] + 8.0).clamp_(0, 15).to(torch.int32).view(N, K)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scales_and_zeros


def unpack_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int, rows: slice | None = None,
                dtype=torch.bfloat16) -> torch.Tensor:
    """Dequantize (a slice of whole 64-row blocks of) a packed int4 weight to [n, K]."""
    N, K = packed.shape[0], packed.shape[1] * 2
    rows = rows or slice(0, N)
    p = packed[rows].view(-1, K, INT4_BLOCK_ROWS // 2)  # per block: byte (k, j) holds rows j and j + 32
    q = torch.cat((p & 15, p >> 4), dim=-1).transpose(1, 2).reshape(-1, K // group, group)
    sz = scales_and_zeros[:, rows].transpose(0, 1).float()  # [n, K/group, 2]
    w = (q.float() - 8.0) * sz[..., :1] + sz[..., 1:]
    return w.reshape(-1, K).to(dtype)


# ---- modules ---------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """Bias-free linear layer on a weight-only quantized weight (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.shape[0] <= DECODE_ROWS:
            y = self.small(x2)
        else:
            y = torch.cat([F.linear(x2, self.dequantize(slice(i, i + DEQUANT_SLICE)))
                           for i in range(0, self.out_features, DEQUANT_SLICE)], dim=-1)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def small(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, rows: slice | None = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(QuantLinear):
    bytes_per_weight = 1.0

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor):
        super().__init__(qweight.shape[1], qweight.shape[0])
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.to(torch.bfloat16))

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> "Int8Linear":
        return cls(*quantize_int8(weight))

    def small(self, x):
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)

    def dequantize(self, rows=None):
        rows = rows or slice(None)
        # int8 is exact in bfloat16; one rounding when scaling
        return self.qweight[rows].to(torch.bfloat16) * self.scales[rows, None]

    def rows_float(self, idx: torch.Tensor) -> torch.Tensor:
        return self.qweight[idx].float() * self.scales[idx].float()[..., None]


class Int4Linear(QuantLinear):
    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int = INT4_GROUP):
        super().__init__(packed.shape[1] * 2, packed.shape[0])
        self.group = group
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, group: int = INT4_GROUP) -> "Int4Linear":
        return cls(*quantize_int4(weight, group), group)

    def small(self, x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scales_and_zeros)

    def dequantize(self, rows=None):
        return unpack_int4(self.packed, self.scales_and_zeros, self.group, rows)


class Int8Embedding(nn.Module):
    """Token embedding lookup from a per-row int8 table (shared with an int8 head when tied)."""

    def __init__(self, table: Int8Linear):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows_float(ids)


class QuantHead(nn.Module):
    """The tied output projection: a fast quantized pass over the whole vocabulary, then the
    `HEAD_REFINE` best candidates of each row recomputed in float32 from the int8 table, so the
    argmax does not hinge on bfloat16 rounding (or, for an int4 head, on int4 error)."""

    def __init__(self, coarse: QuantLinear, table: Int8Linear):
        super().__init__()
        self.coarse = coarse
        self.table = table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.coarse(hidden).float()
        top = logits.topk(HEAD_REFINE, dim=-1).indices  # [..., R]
        exact = torch.einsum("...rk,...k->...r", self.table.rows_float(top), hidden.float())
        return logits.scatter_(-1, top, exact)


# ---- whole models ----------------------------------------------------------------------------
def _linear_weight(module: nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name).weight.detach()


def quantize_model(model, dtype: str):
    """Replace the linear layers and the tied embedding/head of a float `Gemma` in place.

    int8: every linear layer and the head in int8. int4: linear layers and the head in int4
    (groups of 32); the int8 table still serves embedding lookups and the head's refinement.
    """
    if dtype not in QUANT_DTYPES:
        raise CodegemmaError(f"unknown quantized dtype {dtype!r}; expected one of {', '.join(QUANT_DTYPES)}")
    make = Int8Linear.from_weight if dtype == "int8" else Int4Linear.from_weight
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        # one fused projection each for q/k/v and gate/up: fewer kernel calls per token
        attn.qkv_proj = make(torch.cat([_linear_weight(attn, n) for n in ("q_proj", "k_proj", "v_proj")]))
        attn.o_proj = make(_linear_weight(attn, "o_proj"))
        mlp.gate_up_proj = make(torch.cat([_linear_weight(mlp, n) for n in ("gate_proj", "up_proj")]))
        mlp.down_proj = make(_linear_weight(mlp, "down_proj"))
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    table = Int8Linear.from_weight(model.embed_tokens.weight.detach())
    coarse = table if dtype == "int8" else Int4Linear.from_weight(model.embed_tokens.weight.detach())
    model.embed_tokens = Int8Embedding(table)
    model.lm_head = QuantHead(coarse, table)
    model.quantized = dtype
    return model.eval()
