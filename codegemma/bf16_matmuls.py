"""bfloat16 matrix products, float32 everything else: bf16 training on a CPU.

`torch.autocast` on a CPU runs the linear layers in bfloat16 and hands their bfloat16 outputs on,
so the float32 C kernels of `codegemma.fused_ops` (norms, gated GELU, RoPE, attention softmax)
step aside for PyTorch's generic elementwise ops in bfloat16. On a CPU with AMX, where a bf16
product runs ~7x faster than a float32 one (one core: ~1,100 against ~150 GFLOP/s at the tiny-cpu
recipe's shapes), the tiny-cpu step then gains only ~1.5x. Inside `enabled()` only the products
are bfloat16: the linear layers' (through a TorchFunctionMode, so LoRA adapters and any module
that calls `F.linear` are covered), the LM head's (`codegemma.head_loss`) and the attention
kernel's (`codegemma.fused_ops`). Their operands are
rounded to bf16, oneDNN accumulates in float32, and the results come back as float32, so the
activations, the kernels and the softmax stay float32, as does the master copy of the weights.
The rounding is autocast's: products to bf16 precision (8 significant bits), nothing else.

Where the CPU has no bf16 arithmetic (no AMX, no AVX512-BF16: most laptops), PyTorch's bf16
products take a generic path, 80x slower than float32 ones on a 2-core AVX2 EPYC at the tiny-cpu
recipe's shapes. There the same arithmetic runs in float32: the operands rounded to bf16 (so
their products are exact in float32), float32 accumulation, the result rounded to bf16, which is
what the bf16 kernels compute, up to the order of the sums, at float32's speed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from codegemma.kernels import cpu_flags

_ACTIVE = contextvars.ContextVar("bf16_matmuls", default=False)


def active() -> bool:
    return _ACTIVE.get()


@functools.cache
def native_on_this_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX tiles or AVX512-BF16 dot products."""
    flags = cpu_flags().split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def operand(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to bf16 for a product: a bfloat16 tensor where the CPU multiplies those, else
    float32 holding the same values (the module's docstring says why)."""
    low = t.to(torch.bfloat16)
    return low if native_on_this_cpu() else low.float()


def round_(t: torch.Tensor) -> torch.Tensor:
    """A product of `operand`s, in place, to the bf16 precision a bf16 product returns (a bfloat16
    tensor already has it)."""
    return t if t.dtype == torch.bfloat16 else t.copy_(t.to(torch.bfloat16))


def result(t: torch.Tensor) -> torch.Tensor:
    """A product of `operand`s as float32, at bf16 precision."""
    return t.float() if t.dtype == torch.bfloat16 else round_(t)


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (batched too) through bf16 operands, float32 out."""
    a, b = operand(a), operand(b)
    return result(torch.bmm(a, b) if a.dim() == 3 else a @ b)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as float32, through a bf16 product when `active()`."""
    return product(a, b) if active() else a @ b


class _Linear(torch.autograd.Function):
    """x @ w^T (+ b) with bf16 products in both directions; float32 in and out."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        xb, wb = operand(x), operand(weight)
        ctx.save_for_backward(xb, wb)
        ctx.has_bias = bias is not None
        y = result(F.linear(xb, wb))
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad):
        xb, wb = ctx.saved_tensors
        gb = operand(grad)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = result(gb @ wb)
        if ctx.needs_input_grad[1]:
            grad_w = result(gb.reshape(-1, gb.shape[-1]).t() @ xb.reshape(-1, xb.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b


class _LinearMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu":
                return _Linear.apply(x, weight, bias)
        return func(*args, **kwargs)


@contextlib.contextmanager
def enabled():
    """Run the float32 model's products in bf16 on a CPU for the duration (forward; backward
    follows, since each product records its own bf16 backward)."""
    token = _ACTIVE.set(True)
    try:
        with _LinearMode():
            yield
    finally:
        _ACTIVE.reset(token)
