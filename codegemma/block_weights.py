"""Float32 weights read as GGUF-style blocks when decoding.

A GGUF file defines each float32 weight as scale * code - offset over small groups
(codegemma.checkpoints.gguf_blocks). Decoding a token multiplies a few rows of activations by
every weight, so its speed is set by the bytes read: 4 per float32 weight, ~1.1 per code. With
the codes attached, linear layers and the tied head of a float32 model send up to
`kernels.MAX_ROWS` rows through the block kernel (codegemma.kernels), which multiplies by the
very same float32 weights, summed in another order; longer inputs (prompts), training and
anything that changed a weight since use the float32 weights as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codegemma import kernels


class BlockWeight:
    """The block form of one float32 weight, valid while that weight stays as it was."""

    def __init__(self, weight: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 offset: torch.Tensor | None = None):
        if codes.shape != weight.shape or codes.dtype != torch.int8 or scale.shape[0] != weight.shape[0]:
            raise ValueError(f"block codes {tuple(codes.shape)} do not match weight {tuple(weight.shape)}")
        self.codes, self.scale, self.offset = codes.contiguous(), scale.float().contiguous(), offset
        if offset is not None:
            self.offset = offset.float().contiguous()
        self._stamp = self._stamp_of(weight)

    @staticmethod
    def _stamp_of(weight: torch.Tensor):
        return weight.data_ptr(), weight._version, weight.dtype, weight.device

    def usable(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """True when the kernel gives this weight's float32 product for x."""
        if self._stamp != self._stamp_of(weight):
            return False
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() // x.shape[-1] > kernels.MAX_ROWS:
            return False
        if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
            return False  # training: autograd needs the float32 path
        return kernels.available()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.block_matmul(x, self.codes, self.scale, self.offset)

    def nbytes(self) -> int:
        tensors = [self.codes, self.scale] + ([self.offset] if self.offset is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class BlockLinear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) that decodes through its block form."""

    blocks: BlockWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None and self.blocks.usable(x, self.weight):
            y = self.blocks.matmul(x)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class FusedBlocks:
    """Block layers that read the same input (q, k and v; gate and up), computed by one kernel call
    on their concatenated codes, or by each layer's own forward when the kernel does not apply.
    Not an nn.Module: the layers keep their parameters and names, this only holds a copy of codes."""

    def __init__(self, parent: nn.Module, names: list[str]):
        self.parent, self.names = parent, names
        self.layers = layers = [getattr(parent, name) for name in names]
        parts = [layer.blocks for layer in layers]
        self.codes = torch.cat([b.codes for b in parts])
        self.scale = torch.cat([b.scale for b in parts])
        self.offset = None if parts[0].offset is None else torch.cat([b.offset for b in parts])

    @staticmethod
    def fusable(parent: nn.Module, names: list[str]) -> bool:
        """Same input width, same group size, all with or all without offsets."""
        layers = [getattr(parent, name) for name in names]
        if not all(isinstance(m, BlockLinear) and m.blocks is not None and m.bias is None for m in layers):
            return False
        first = layers[0].blocks
        return all(m.blocks.codes.shape[1] == first.codes.shape[1] and m.blocks.scale.shape[1] == first.scale.shape[1]
                   and (m.blocks.offset is None) == (first.offset is None) for m in layers)

    def intact(self) -> bool:
        """False once a layer was replaced, e.g. wrapped by a LoRA adapter: its output then differs."""
        return all(getattr(self.parent, name) is layer for name, layer in zip(self.names, self.layers))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.intact() and all(m.blocks.usable(x, m.weight) for m in self.layers):
            return kernels.block_matmul(x, self.codes, self.scale, self.offset)
        return torch.cat([getattr(self.parent, name)(x) for name in self.names], dim=-1)


def _fuse(model):
    """One kernel call for q/k/v and one for gate/up per layer: fewer calls per decoded token."""
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        if attn.qkv_proj is None and FusedBlocks.fusable(attn, ["q_proj", "k_proj", "v_proj"]):
            attn.qkv_proj = FusedBlocks(attn, ["q_proj", "k_proj", "v_proj"])
        if mlp.gate_up_proj is None and FusedBlocks.fusable(mlp, ["gate_proj", "up_proj"]):
            mlp.gate_up_proj = FusedBlocks(mlp, ["gate_proj", "up_proj"])


def attach(model, tensors: dict[str, torch.Tensor]) -> int:
    """Give the model's float32 linear layers and tied head their block forms from `tensors`
    ({"<weight name>.codes" / ".scale" / ".offset": ...}); returns how many weights got one."""
    attached = 0
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if type(module) is not nn.Linear or f"{key}.codes" not in tensors or module.weight.dtype != torch.float32:
            continue
        layer = BlockLinear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        layer.weight, layer.bias = module.weight, module.bias
        layer.blocks = BlockWeight(module.weight, tensors[f"{key}.codes"], tensors[f"{key}.scale"],
                                   tensors.get(f"{key}.offset"))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        attached += 1
    _fuse(model)
    head = "embed_tokens.weight"
    if model.lm_head is None and f"{head}.codes" in tensors and model.embed_tokens.weight.dtype == torch.float32:
        model.attach_head_blocks(BlockWeight(model.embed_tokens.weight, tensors[f"{head}.codes"],
                                             tensors[f"{head}.scale"], tensors.get(f"{head}.offset")))
        attached += 1
    from codegemma.decode_step import DecodeStep  # it builds on this module's classes

    model._decode_step = DecodeStep.build(model)
    return attached
