"""Weight-only quantized layers for CPU inference: 8 or 4 bits per weight in groups of 32.

Decoding one token reads every weight once, so its speed is set by the bytes of weights
(memory bandwidth); a prefill multiplies hundreds of tokens by each weight, so its speed is set
by arithmetic. Each layer keeps one compact weight and picks its kernel by the number of rows:
a few rows go to PyTorch's CPU int4 kernel, which reads the packed weight directly; many rows
dequantize the weight to bfloat16 (in slices, to bound memory) and use the bfloat16 GEMM, or on a
CPU without bf16 arithmetic the same product in float32 (codegemma.bf16_matmuls).

Why groups of 32: the default model's GGUF weights are themselves quantized in blocks of 32
(Q5_0, Q8_0, Q4_K), and one scale per output row loses too much of them (argmax agreement with
float32 fell to 97.5%, bench/NOTES-inference.md). 8-bit weights are stored as two int4 planes,
high and low nibble of an asymmetric 8-bit code, which the int4 kernel multiplies in one call
(the planes are stacked as extra output rows) and which are summed afterwards.

Activations enter the kernels as bfloat16; the residual stream, norms and attention stay in
float32. Logits in bfloat16 are too coarse to pick the argmax (steps of 0.125 near 20), so the
head recomputes its best candidates in float32 from an int8 table that also serves the
embedding lookups.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from codegemma import bf16_matmuls, kernels
from codegemma.errors import CodegemmaError

QUANT_DTYPES = ("int8", "int4")
GROUP = 32
# Up to this many rows the weight-only kernel beats dequantize + bf16 GEMM: at 8-32 rows (batched
# decoding) the kernel took 0.6-31 ms a layer against 7-200 ms for dequantizing (NOTES-inference.md).
DECODE_ROWS = 32
DEQUANT_SLICE = 16384  # output rows dequantized at a time for many-row inputs (bounds temporary memory)
BLOCK_ROWS = 64  # the CPU int4 kernel packs weights in blocks of 64 output rows (32 on CPUs without AVX-512)
HEAD_REFINE = 16  # candidates per row whose logits the head recomputes in float32


# ---- quantization ----------------------------------------------------------------------------
def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def quantize_groups(weight: torch.Tensor, bits: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric `bits`-bit codes (4 or 8) per group of `group` columns, as int4 planes.

    Returns (packed [P*N, K/2] uint8, scales_and_zeros [K/group, P*N, 2] bfloat16) for
    `_weight_int4pack_mm_for_cpu`, P = bits / 4 planes stacked along the rows; plane p decodes as
    (nibble - 8) * scale_p + zero_p and the planes add up to the weight.
    """
    N, K = weight.shape
    if bits not in (4, 8):
        raise CodegemmaError(f"bits must be 4 or 8, got {bits}")
    if K % group or N % BLOCK_ROWS:
        raise CodegemmaError(f"quantized layers need columns divisible by {group} and rows by {BLOCK_ROWS}, "
                             f"got {N}x{K}")
    w = weight.float().view(N, K // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    levels = 2 ** bits - 1
    # rounded up, so that the largest weight of a group still has a code
    scale = _bf16(((hi - lo) / levels).clamp(min=1e-12) * (1 + 2 ** -8))
    # every plane adds its own offset of 8 steps; the zeros are rounded to bfloat16, so the code
    # is computed against the offset they really encode
    steps = [scale * 16 ** p for p in range(bits // 4)]  # plane p weighs 16^p (exact in bfloat16)
    centre = lo + 8.0 * sum(steps)
    zeros = [_bf16(centre)] + [torch.zeros_like(centre)] * (len(steps) - 1)
    if len(steps) == 2:  # the high plane carries the offset, the low plane its rounding residue
        zeros = [_bf16(centre - _bf16(centre)), _bf16(centre)]
    offset = sum(zeros) - 8.0 * sum(steps)
    code = torch.round((w - offset[..., None]) / scale[..., None]).clamp_(0, levels).to(torch.int32).view(N, K)
    planes = [(code >> (4 * p)) & 15 for p in range(len(steps))]
    packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1) for q in planes])
    sz = torch.cat([torch.stack((s, z), dim=-1) for s, z in zip(steps, zeros)])  # [P*N, K/group, 2]
    return packed, sz.transpose(0, 1).contiguous().to(torch.bfloat16)


@functools.cache
def _packed_block_rows() -> int:
    """The rows per block of `_convert_weight_to_int4pack_for_cpu`'s layout, which PyTorch picks by
    the CPU's instruction set (64 with AVX-512, 32 otherwise): read off a packed probe whose code is
    the row's 16-row band, so the high nibble of byte 1 tells which row sits beside row 1."""
    probe = (torch.arange(BLOCK_ROWS, dtype=torch.int32) // 16)[:, None].expand(BLOCK_ROWS, GROUP).contiguous()
    band = int(torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1).view(-1)[1]) >> 4
    if band not in (1, 2):  # row 1 + block / 2 lies in band 1 (block 32) or 2 (block 64)
        raise RuntimeError(f"unknown int4 packing layout of this PyTorch build (band {band})")
    return 32 * band


def dequantize_groups(packed: torch.Tensor, scales_and_zeros: torch.Tensor, planes: int, rows: slice | None = None,
                      dtype=torch.bfloat16) -> torch.Tensor:
    """The weight [n, K] (or a slice of whole 64-row blocks of it) from `quantize_groups` output."""
    N, K = packed.shape[0] // planes, packed.shape[1] * 2
    group = K // scales_and_zeros.shape[0]
    rows = rows or slice(0, N)
    total = None
    block = _packed_block_rows()
    for p in range(planes):
        part = slice(p * N + rows.start, p * N + min(rows.stop, N))
        b = packed[part].view(-1, K, block // 2)  # per block: byte (k, j) holds rows j and j + block / 2
        q = torch.cat((b & 15, b >> 4), dim=-1).transpose(1, 2).reshape(-1, K // group, group)
        sz = scales_and_zeros[:, part].transpose(0, 1).float()  # [n, K/group, 2]
        w = (q.float() - 8.0) * sz[..., :1] + sz[..., 1:]
        total = w if total is None else total + w
    return total.reshape(-1, K).to(dtype)


def quantize_table(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group (the layout of GGUF's Q8_0): (q [N, K] int8, scales [N, K/group] float32)."""
    N, K = weight.shape
    w = weight.float().view(N, K // group, group)
    scales = (w.abs().amax(dim=-1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[..., None]).clamp_(-127, 127).to(torch.int8).view(N, K)
    return q, scales


# ---- modules ---------------------------------------------------------------------------------
class GroupLinear(nn.Module):
    """Bias-free linear layer on `quantize_groups` weights (see the module docstring)."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, planes: int):
        super().__init__()
        self.planes = planes
        self.in_features, self.out_features = packed.shape[1] * 2, packed.shape[0] // planes
        self.group = self.in_features // scales_and_zeros.shape[0]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int) -> "GroupLinear":
        return cls(*quantize_groups(weight, bits), bits // 4)

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, bits: int) -> "GroupLinear":
        return cls(tensors[prefix + "packed"], tensors[prefix + "scales_and_zeros"], bits // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.shape[0] <= DECODE_ROWS:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_and_zeros)
            y = y.float().view(-1, self.planes, self.out_features).sum(dim=1)
        else:  # bf16 operands; in float32 holding their values where the CPU has no bf16 arithmetic
            x2 = bf16_matmuls.operand(x2)
            slices = (self.dequantize(slice(i, i + DEQUANT_SLICE)) for i in range(0, self.out_features, DEQUANT_SLICE))
            y = torch.cat([bf16_matmuls.result(F.linear(x2, bf16_matmuls.operand(w))) for w in slices], dim=-1)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantize(self, rows: slice | None = None, dtype=torch.bfloat16) -> torch.Tensor:
        return dequantize_groups(self.packed, self.scales_and_zeros, self.planes, rows, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={4 * self.planes}"


class Int8Table(nn.Module):
    """Token embedding rows in int8 per group of 32: embedding lookups and the head's refinement."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> "Int8Table":
        return cls(*quantize_table(weight))

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> "Int8Table":
        return cls(tensors[prefix + "qweight"], tensors[prefix + "scales"])

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        q = self.qweight[idx].float()
        return (q.unflatten(-1, (self.scales.shape[-1], -1)) * self.scales[idx][..., None]).flatten(-2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)


class QuantHead(nn.Module):
    """The tied output projection: a fast int4 pass over the whole vocabulary, then the
    `HEAD_REFINE` best candidates of each row recomputed in float32 from the int8 table, so the
    argmax hinges on neither int4 error nor bfloat16 rounding."""

    def __init__(self, coarse: GroupLinear, table: Int8Table):
        super().__init__()
        self.coarse = coarse
        self.table = table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.coarse(hidden).float()
        top = logits.topk(HEAD_REFINE, dim=-1).indices  # [..., R]
        exact = (self.table.rows(top) @ hidden.float()[..., None]).squeeze(-1)
        return logits.scatter_(-1, top, exact)


# ---- whole models ----------------------------------------------------------------------------
QUANTIZED_LINEARS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     "self_attn.o_proj": ("self_attn.o_proj",),
                     "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
                     "mlp.down_proj": ("mlp.down_proj",)}


def quantize_model(model, dtype: str, tensors: dict[str, torch.Tensor] | None = None):
    """Replace the linear layers and the tied embedding/head of a `Gemma` in place.

    int8 / int4: linear layers with 8 / 4 bits per weight; either way the head's fast pass is
    int4 and the int8 table refines it. With `tensors` (from `quantized_tensors`, e.g. a
    memory-mapped cache) the model may live on the meta device and is rebuilt from them.
    """
    if dtype not in QUANT_DTYPES:
        raise CodegemmaError(f"unknown quantized dtype {dtype!r}; expected one of {', '.join(QUANT_DTYPES)}")
    bits = 8 if dtype == "int8" else 4

    def build(kind, prefix: str, weight, **kw):
        return kind.from_tensors(tensors, prefix, **kw) if tensors is not None else kind.from_weight(weight(), **kw)

    for i, block in enumerate(model.layers):
        for name, sources in QUANTIZED_LINEARS.items():
            parent, attr = name.split(".")
            weight = lambda sources=sources: torch.cat([block.get_submodule(s).weight.detach() for s in sources])  # noqa: E731
            setattr(getattr(block, parent), attr, build(GroupLinear, f"layers.{i}.{name}.", weight, bits=bits))
        for name in ("q_proj", "k_proj", "v_proj"):
            delattr(block.self_attn, name)
        for name in ("gate_proj", "up_proj"):
            delattr(block.mlp, name)
    embedding = lambda: model.embed_tokens.weight.detach()  # noqa: E731
    table = build(Int8Table, "embed_tokens.", embedding)
    coarse = build(GroupLinear, "lm_head.coarse.", embedding, bits=4)
    model.embed_tokens = table
    model.lm_head = QuantHead(coarse, table)
    if tensors is not None:
        floats = {name for name, _ in model.named_parameters()}
        model.load_state_dict({k: v for k, v in tensors.items() if k in floats}, assign=True, strict=False)
        missing = sorted(name for name, p in model.named_parameters() if p.is_meta)
        if missing:
            raise CodegemmaError(f"quantized weights lack {missing[0]}")
        model.reset_buffers()
    model.quantized = dtype
    return model.eval()


def quantized_tensors(model) -> dict[str, torch.Tensor]:
    """The tensors that rebuild a quantized model, each stored once (the int8 table is shared)."""
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head.table.")}


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every linear layer and the whole head."""
    def size(module):
        tensors = [*module.buffers(recurse=False), *module.parameters(recurse=False)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def layer_size(module):  # float32 layers with a block form read only that (codegemma.block_weights)
        blocks = getattr(module, "blocks", None)
        return blocks.nbytes() if blocks is not None and kernels.available() else size(module)

    layers = sum(layer_size(m) for m in model.layers.modules() if isinstance(m, (GroupLinear, nn.Linear)))
    if model.lm_head is not None:
        head = size(model.lm_head.coarse)
    elif model.attached_head_blocks is not None and kernels.available():
        head = model.attached_head_blocks.nbytes()
    elif model.attached_head_screen is not None:  # greedy decoding reads the 8-bit screen (codegemma.head_screen)
        head = model.attached_head_screen.nbytes()
    else:
        head = size(model.embed_tokens)
    return layers + head
