"""The MLP's gated GELU and RMSNorm, through fused C kernels when training on a CPU.

PyTorch runs each as a chain of elementwise kernels, forward and backward (the GELU, its product
with the up projection, RMSNorm's backward as separate reductions and products), each a full pass
through memory; `codegemma/kernels/train_ops.c` does each direction in one. On the tiny-cpu
recipe's batch (8 x 256 tokens, two cores), forward and backward of the activation take 5 ms
instead of 11 and a norm 0.5 ms instead of 2.4: ~60 ms of an ~800 ms training step.

The kernels serve autograd only: where no gradient is recorded (inference, evaluation), on other
devices and dtypes, under torch.compile (which fuses these ops itself), and where no C compiler
is available, the same functions run PyTorch's ops, so inference keeps its bit-exact agreement with
transformers. The kernels agree with PyTorch up to float32 rounding (tests/test_fused_ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from codegemma import kernels


def _use_kernels(*tensors: torch.Tensor) -> bool:
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.compiler.is_compiling() and kernels.available())


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up, Gemma's MLP activation."""
    if gate.shape == up.shape and _use_kernels(gate, up):
        return _Geglu.apply(gate, up)
    return F.gelu(gate, approximate="tanh") * up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm over the last dimension, scaled by (1 + weight), computed in float32."""
    if weight.dim() == 1 and x.shape[-1] == weight.shape[0] and _use_kernels(x, weight):
        return _RmsNorm.apply(x, weight, eps)
    # One fused kernel instead of seven ops (decode runs ~100 norms per token); it computes
    # x * rsqrt(mean(x^2) + eps) * w in float32 like the explicit form, bit for bit.
    return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + weight.float(), eps).type_as(x)


def softmax_xent_grad_(z: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, nll: torch.Tensor) -> bool:
    """For float32 logits z [rows, V] on a CPU: writes logsumexp(z) - z[target] per row into `nll`
    and overwrites z with weights * (softmax(z) - onehot(targets)), the fused LM head's gradient
    (codegemma.head_loss). Returns False, touching nothing, where the kernel does not apply."""
    if not (z.device.type == "cpu" and z.dtype == torch.float32 and nll.dtype == torch.float32 and z.dim() == 2
            and z.is_contiguous() and nll.is_contiguous() and not torch.compiler.is_compiling()
            and kernels.available()):
        return False
    targets = targets.to(torch.int64).contiguous()
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= z.shape[1]):  # the kernel does not check
        raise IndexError(f"target id outside the vocabulary of {z.shape[1]}")
    weights = weights.to(torch.float32).contiguous()
    kernels.library().softmax_xent_grad(z.data_ptr(), targets.data_ptr(), weights.data_ptr(), nll.data_ptr(),
                                        z.shape[0], z.shape[1], _threads())
    return True


def _threads() -> int:
    return torch.get_num_threads()


class _Geglu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty_like(gate)
        kernels.library().geglu_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(), _threads())
        ctx.save_for_backward(gate, up)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad = grad.contiguous()
        grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
        kernels.library().geglu_backward(gate.data_ptr(), up.data_ptr(), grad.data_ptr(), grad_gate.data_ptr(),
                                         grad_up.data_ptr(), gate.numel(), _threads())
        return grad_gate, grad_up


class _RmsNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x, weight = x.contiguous(), weight.contiguous()
        d = x.shape[-1]
        rows = x.numel() // d
        out = torch.empty_like(x)
        rstd = torch.empty(x.shape[:-1], dtype=torch.float32)
        kernels.library().rms_norm_forward(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rstd.data_ptr(), rows, d,
                                           eps, _threads())
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        d = x.shape[-1]
        rows = x.numel() // d
        grad_x, grad_w = torch.empty_like(x), torch.empty_like(weight)
        partial = torch.empty((rows + 63) // 64, d, dtype=torch.float32)  # ROW_BLOCK rows of train_ops.c
        kernels.library().rms_norm_backward(x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad.data_ptr(),
                                            grad_x.data_ptr(), grad_w.data_ptr(), partial.data_ptr(), rows, d,
                                            _threads())
        return grad_x, (grad_w if ctx.needs_input_grad[1] else None), None
