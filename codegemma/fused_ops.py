"""The MLP's gated GELU, RMSNorm (alone or with a residual add), RoPE, causal attention and the LM
head's softmax gradient, through fused C kernels when training on a CPU.

PyTorch runs each as a chain of elementwise kernels, forward and backward (the GELU, its product
with the up projection, RMSNorm's backward as separate reductions and products, RoPE's products
and roll, the softmax's max, exp, sum and scaling), each a full pass through memory;
`codegemma/kernels/train_ops.c` does each direction in one. On the tiny-cpu recipe's batch
(8 x 256 tokens, two cores), forward and backward of the activation take 5 ms instead of 11, a
norm 0.5 ms instead of 2.4, the queries' RoPE 0.4 instead of 0.8-1.5: together with the head's
kernel (codegemma.head_loss) the training step went from ~800 to ~700 ms. Attention
(`causal_attention`) runs as batched products per block of 64 queries, skipping the key blocks
after the diagonal, around a masked-softmax kernel; the query heads of a key head form one matrix.
Forward and backward take ~11-13 ms a layer where SDPA's CPU flash kernel takes ~16-21, which
makes the step 5-8% faster (the demo shards' packed batches; the benchmark's). In Gemma 2/3's
post-norm blocks each residual add runs with the norms on either side of it (`residual_rms_norm`):
one pass where a norm, an add and a norm took three, ~0.8% of the tiny-cpu step (paired rounds).

The layer kernels serve autograd only: where no gradient is recorded (inference, evaluation), on
other devices and dtypes, under torch.compile (which fuses these ops itself), and where no C
compiler is available, the same functions run PyTorch's ops, so inference keeps its bit-exact
agreement with transformers. The kernels agree with PyTorch up to float32 rounding
(tests/test_fused_ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from codegemma import bf16_matmuls, kernels


def cpu_float32(*tensors: torch.Tensor) -> bool:
    """The kernels apply: float32 tensors on a CPU, outside torch.compile, the kernels built."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.compiler.is_compiling() and kernels.available())


def _use_kernels(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and cpu_float32(*tensors)


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


def residual_norms_train(x: torch.Tensor, h: torch.Tensor) -> bool:
    """Whether a block's residual adds should go through residual_rms_norm's kernel (training on a
    CPU); elsewhere the model calls its norm modules, as inference always does."""
    return x.shape == h.shape and _use_kernels(x, h)


def residual_rms_norm(x: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor | None,
                      eps: float) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x + rms_norm(h, w1) and, with w2, also rms_norm(y, w2): a post-norm block's residual add and
    the next norm, one pass through memory each way when training on a CPU."""
    if (x.shape == h.shape and w1.shape == (x.shape[-1],) and (w2 is None or w2.shape == w1.shape)
            and _use_kernels(x, h, w1, *([] if w2 is None else [w2]))):
        return _ResidualRmsNorm.apply(x, h, w1, w2, eps)
    y = x + rms_norm(h, w1, eps)
    return y if w2 is None else (y, rms_norm(y, w2, eps))


def softmax_xent_columns_(z_t: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                          nll: torch.Tensor) -> torch.Tensor:
    """For float32 logits stored transposed, z_t [V, rows], on a CPU (`cpu_float32`): writes
    logsumexp - z[target] per row into `nll`, overwrites z_t with exp(z - max) - sum * onehot(targets)
    (sum of exp(z - max) per row) and returns scale = weights / sum [rows]: the gradient of
    sum(weights * nll) by z is scale * z_t^T."""
    if not (z_t.dim() == 2 and z_t.is_contiguous() and nll.is_contiguous()
            and z_t.dtype == nll.dtype == torch.float32):
        raise ValueError("softmax_xent_columns_ takes contiguous float32 [V, rows] logits and [rows] nll")
    V, rows = z_t.shape
    targets = targets.to(torch.int64).contiguous()
    if rows and (int(targets.min()) < 0 or int(targets.max()) >= V):  # the kernel does not check
        raise IndexError(f"target id outside the vocabulary of {V}")
    weights = weights.to(torch.float32).contiguous()
    scale, top, total = torch.empty(rows), torch.empty(rows), torch.empty(rows)
    kernels.library().softmax_xent_columns(z_t.data_ptr(), targets.data_ptr(), weights.data_ptr(), nll.data_ptr(),
                                           scale.data_ptr(), top.data_ptr(), total.data_ptr(), V, rows, _threads())
    return scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + (-x2, x1) * sin, written as x * cos + (x2, x1) * (-sin1, sin2).

    The products are the same numbers (a sign flip is exact), but swapping the halves is one
    roll, whose backward is a roll too, where slicing out the halves costs a zero-filled
    gradient buffer per slice. In the activation dtype, as transformers does (cos/sin are
    computed in float32 and cast): bfloat16 models stay close to the reference.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """RoPE of projected heads x [B, T, H, D], returned in attention's layout [B, H, T, D];
    cos and sin_signed are [B, 1, T, D] (codegemma.model.rope_cos_sin and signed_sin).

    With `groups` G > 1 (query heads per key head), the layout is causal_attention's
    [B, H / G, T * G, D]: row t * G + g of key head kh holds query head kh * G + g at position t."""
    B, T, H, D = x.shape
    if (cos.shape == sin_signed.shape == (B, 1, T, D) and D % 2 == 0 and H % groups == 0 and cos.is_contiguous()
            and sin_signed.is_contiguous() and cos.dtype == sin_signed.dtype == torch.float32 and _use_kernels(x)):
        return _Rope.apply(x, cos, sin_signed, groups)
    y = apply_rope(x.transpose(1, 2), cos, sin_signed)
    if groups == 1:
        return y
    return y.view(B, H // groups, groups, T, D).transpose(2, 3).reshape(B, H // groups, T * groups, D)


# causal_attention computes the scores of query blocks of this many positions against the keys up to
# the block's end: blocks above the diagonal are skipped (3/8 of the products at 256 tokens). Blocks
# of 64 took the tiny-cpu layer's forward and backward from 33.6 ms to 28.5 ms against blocks of 128
# (2 threads, batch 8 x 256); 32 saved no more.
ATTENTION_BLOCK = 64
# It keeps each layer's attention probabilities for backward: up to this many (64 MB) per layer;
# longer rows keep SDPA's flash kernel, which recomputes them.
ATTENTION_MAX_SCORES = 1 << 24


def causal_attention_applies(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether causal_attention takes this training step's attention: q [B, T, H, D] and k
    [B, T, Hkv, D] as projected, recording gradients in float32 on a CPU (`cpu_float32`), and a mask
    that is None (plain causal) or bool [B, 1, T, T] allowing no key after its query (a document or
    window mask: the kernel relies on it)."""
    B, T, H, _ = q.shape
    if not (_use_kernels(q, k) and k.shape[0] == B and k.shape[1] == T and H % k.shape[2] == 0
            and B * H * T * T <= ATTENTION_MAX_SCORES):
        return False
    if mask is None:
        return True
    return (mask.dtype == torch.bool and mask.shape == (B, 1, T, T)
            and not bool(torch.triu(mask[:, 0], diagonal=1).any()))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + causal / mask) v for training on a CPU (see causal_attention_applies).

    q [B, Hkv, T * G, D] in rope's grouped layout, k and v [B, Hkv, T, D]; returns the same layout
    as q. Grouping the G query heads of a key head into one matrix makes one product per key head
    instead of G, with the key and value matrices shared, and no gradient to sum over copies."""
    return _CausalAttention.apply(q, k, v, mask, scale)


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


class _ResidualRmsNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, w1, w2, eps):
        x, h = x.contiguous(), h.contiguous()
        d = x.shape[-1]
        rows = x.numel() // d
        y = torch.empty_like(x)
        n = torch.empty_like(x) if w2 is not None else None
        rstd1, rstd2 = torch.empty(rows), torch.empty(rows)
        w2c = w2.contiguous() if w2 is not None else None
        kernels.library().residual_rms_norm_forward(
            x.data_ptr(), h.data_ptr(), w1.contiguous().data_ptr(), _ptr(w2c), y.data_ptr(), _ptr(n),
            rstd1.data_ptr(), rstd2.data_ptr(), rows, d, eps, _threads())
        ctx.save_for_backward(h, w1, rstd1, y if w2 is not None else None, w2c, rstd2)
        return y if w2 is None else (y, n)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_n=None):
        h, w1, rstd1, y, w2, rstd2 = ctx.saved_tensors
        d = h.shape[-1]
        rows = h.numel() // d
        grad_y = grad_y.contiguous()
        grad_n = grad_n.contiguous() if w2 is not None else None
        grad_x, grad_h = torch.empty_like(h), torch.empty_like(h)
        grad_w1, grad_w2 = torch.empty_like(w1), (torch.empty_like(w2) if w2 is not None else None)
        blocks = (rows + 63) // 64  # ROW_BLOCK rows of train_ops.c
        partial1 = torch.empty(blocks, d)
        partial2 = torch.empty(blocks, d) if w2 is not None else None
        kernels.library().residual_rms_norm_backward(
            h.data_ptr(), w1.contiguous().data_ptr(), rstd1.data_ptr(), _ptr(y), _ptr(w2), rstd2.data_ptr(),
            grad_y.data_ptr(), _ptr(grad_n), grad_x.data_ptr(), grad_h.data_ptr(), partial1.data_ptr(),
            _ptr(partial2), grad_w1.data_ptr(), _ptr(grad_w2), rows, d, _threads())
        return (grad_x, grad_h, grad_w1 if ctx.needs_input_grad[2] else None,
                grad_w2 if ctx.needs_input_grad[3] else None, None)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin_signed, groups):
        x = x.contiguous()
        B, T, H, D = x.shape
        out = torch.empty(B, H, T, D) if groups == 1 else torch.empty(B, H // groups, T * groups, D)
        kernels.library().rope_forward(x.data_ptr(), cos.data_ptr(), sin_signed.data_ptr(), out.data_ptr(), B, T, H, D,
                                       groups, _threads())
        ctx.save_for_backward(cos, sin_signed)
        ctx.shape, ctx.groups = x.shape, groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cos, sin_signed = ctx.saved_tensors
        B, T, H, D = ctx.shape
        grad = grad.contiguous()
        grad_x = torch.empty(B, T, H, D, dtype=grad.dtype)
        kernels.library().rope_backward(grad.data_ptr(), cos.data_ptr(), sin_signed.data_ptr(), grad_x.data_ptr(),
                                        B, T, H, D, ctx.groups, _threads())
        return grad_x, None, None, None


def _query_blocks(T: int, G: int):
    """(first position, first row, rows, keys) of each query block of causal_attention."""
    for t0 in range(0, T, ATTENTION_BLOCK):
        t1 = min(t0 + ATTENTION_BLOCK, T)
        yield t0, t0 * G, (t1 - t0) * G, t1


class _CausalAttention(torch.autograd.Function):
    """Per query block: scores by one batched product, the masked softmax in place by a kernel, then
    the weighted values; backward by four products and the softmax's gradient kernel. Every product
    covers only the keys up to the block's last position."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, Hkv, TG, D = q.shape
        T = k.shape[2]
        G = TG // T
        mask_u8 = mask.contiguous().view(torch.uint8) if mask is not None else None
        qf, kf, vf = q.view(B * Hkv, TG, D), k.view(B * Hkv, T, D), v.view(B * Hkv, T, D)
        ctx.low = bf16_matmuls.active()  # backward runs outside the context: remember it
        bmm = bf16_matmuls.product if ctx.low else torch.bmm
        probs, out = [], torch.empty_like(qf)
        for t0, row, rows, keys in _query_blocks(T, G):
            p = bmm(qf[:, row:row + rows], kf[:, :keys].transpose(1, 2))
            kernels.library().attention_softmax_forward(
                p.data_ptr(), mask_u8.data_ptr() if mask_u8 is not None else None, B * Hkv, Hkv, rows, keys, t0, G,
                T, scale, _threads())
            probs.append(p)
            if ctx.low:
                out[:, row:row + rows] = bmm(p, vf[:, :keys])
            else:  # written in place: no per-block result to copy
                torch.bmm(p, vf[:, :keys], out=out[:, row:row + rows])
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.scale = scale
        return out.view(B, Hkv, TG, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, out, *probs = ctx.saved_tensors
        B, Hkv, TG, D = q.shape
        T = k.shape[2]
        G = TG // T
        grad = grad.contiguous().view(B * Hkv, TG, D)
        qf, kf, vf = q.view(B * Hkv, TG, D), k.view(B * Hkv, T, D), v.view(B * Hkv, T, D)
        grad_q = torch.empty_like(qf)
        grad_k, grad_v = torch.zeros_like(kf), torch.zeros_like(vf)
        bmm = bf16_matmuls.product if ctx.low else torch.bmm
        for (t0, row, rows, keys), p in zip(_query_blocks(T, G), probs):
            g = grad[:, row:row + rows]
            ds = bmm(g, vf[:, :keys].transpose(1, 2))
            kernels.library().attention_softmax_backward(
                ds.data_ptr(), p.data_ptr(), g.data_ptr(), out[:, row:row + rows].data_ptr(), B * Hkv, rows, keys, D,
                TG * D, ctx.scale, _threads())
            if ctx.low:
                grad_q[:, row:row + rows] = bmm(ds, kf[:, :keys])
                grad_k[:, :keys] += bmm(ds.transpose(1, 2), qf[:, row:row + rows])
                grad_v[:, :keys] += bmm(p.transpose(1, 2), g)
            else:  # written and accumulated in place
                torch.bmm(ds, kf[:, :keys], out=grad_q[:, row:row + rows])
                grad_k[:, :keys].baddbmm_(ds.transpose(1, 2), qf[:, row:row + rows])
                grad_v[:, :keys].baddbmm_(p.transpose(1, 2), g)
        shape = (B, Hkv, T, D)
        return grad_q.view(B, Hkv, TG, D), grad_k.view(shape), grad_v.view(shape), None, None
