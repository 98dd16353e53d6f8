"""The LM head and the next-token cross-entropy in one pass over row chunks, for training.

The plain way computes the [tokens, vocab] logits, then a log-softmax, then, in backward, a
gradient of the same size, each a full pass through memory (64 MB each for a 2,048 x 8,192
batch; 2 GB for a 262k vocabulary). Here each chunk of rows goes through head, softmax and
gradient while it is still in cache, and the full logits never exist.

The loss this serves is linear in the per-position NLL: sum_i w_i * nll_i (pretraining and SFT
weight trained positions by 1 and the rest by 0). Its gradient is then known in the forward pass,
so it is computed there, chunk by chunk, and backward only scales it by the incoming scalar. No
logit is computed twice.

In float32 on a CPU a chunk's logits are computed transposed ([vocab, rows], the faster product
there) and its softmax, NLL and gradient scale come from one C kernel (codegemma.fused_ops); inside
codegemma.bf16_matmuls.enabled() the products are bf16 ones and the rest stays float32.
"""

from __future__ import annotations

import torch

from codegemma import bf16_matmuls, fused_ops

CHUNK_ELEMENTS = 1 << 21  # logits per chunk on a CPU: 8 MB in float32, which stays in cache
GPU_CHUNK_ELEMENTS = 1 << 27  # on a GPU: 512 MB, so that each chunk's matmuls keep the GPU busy
# Each chunk's three products read the whole head weight, so a chunk needs enough rows to reuse it:
# with Gemma's 262k vocabulary the cache budget alone gives 8 rows, and a 2,048-token batch read
# the 168M-parameter head 768 times (its forward and backward: 101 s in bf16 on 2 cores, 9.4 s at
# 256 rows; docs/experiments).
MIN_CHUNK_ROWS = 256  # at 262k: 268 MB of float32 logits a chunk, an eighth of 2,048 tokens' worth


def chunk_rows(vocab_size: int, device: torch.device) -> int:
    budget = CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS
    return max(MIN_CHUNK_ROWS, budget // vocab_size)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, softcap: float | None):
    """Float32 logits of one chunk, and tanh(z / cap) when capped (its derivative needs it)."""
    z = bf16_matmuls.mm(h, weight.t())
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # softmax in float32 at least
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype where autocast is on (bf16 training on GPUs)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              softcap: float | None = None) -> torch.Tensor:
    """Per-position NLL [N] of `targets` [N] under logits hidden [N, d] @ weight[V, d]^T, no gradient."""
    dtype = _compute_dtype(weight)
    h, w = hidden.to(dtype), weight.to(dtype)
    out = torch.empty(h.shape[0], dtype=_accumulate_dtype(dtype), device=h.device)
    step = chunk_rows(w.shape[0], h.device)
    for r0 in range(0, h.shape[0], step):
        z, _ = _chunk_logits(h[r0:r0 + step], w, softcap)
        out[r0:r0 + step] = torch.logsumexp(z, -1) - z.gather(1, targets[r0:r0 + step, None])[:, 0]
    return out


def _nll_and_grad_(z: torch.Tensor, t: torch.Tensor | None, targets: torch.Tensor, weights: torch.Tensor,
                   nll: torch.Tensor) -> torch.Tensor:
    """Writes each row's NLL into `nll` and returns d(w_i * nll_i)/dz = w_i * (softmax(z) - onehot(target)),
    through the soft-cap where there is one (`t`), computed in z's memory."""
    target_z = z.gather(1, targets[:, None])[:, 0]
    top = z.amax(-1)
    g = z.sub_(top[:, None]).exp_()  # one exp per logit, in z's memory
    total = g.sum(-1)
    nll.copy_(top + total.log() - target_z)
    g.div_(total[:, None])
    g[torch.arange(len(targets), device=z.device), targets] -= 1.0
    g.mul_(weights[:, None])
    if t is not None:
        g.mul_(1.0 - t * t)  # through the soft-cap: d(cap * tanh(z / cap)) = 1 - tanh^2
    return g


class _Buffers:
    """A chunk's logits and products, allocated once per forward pass and reused by every chunk.

    At Gemma's 262k vocabulary a chunk's logits are 268 MB and the bf16 weight gradient's product
    336 MB; freshly allocated per chunk they came from new pages each time (glibc maps blocks that
    large afresh), and the page faults cost more than the products: a step of Gemma 3 270M in bf16
    on 2 cores took 23-27 s with 2.2M faults, 16-19 s with 1.15M once the buffers were reused."""

    def __init__(self):
        self.tensors = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None or t.shape != shape or t.dtype != dtype:
            t = self.tensors[name] = torch.empty(shape, dtype=dtype, device=like.device)
        return t


def _transposed_chunk(hc, w, w_low, targets, weights, nll, grad_h, grad_w, r0, bufs: _Buffers):
    """One chunk with its logits transposed, through the C kernel (float32 on a CPU): there,
    W @ h^T ([V, rows] out) is the faster product, and the gradient's row scale goes on the small
    operand of each product instead of a pass over the logits. With `w_low` (w in bf16, inside
    codegemma.bf16_matmuls.enabled()) the three products are bf16 ones, their results float32."""
    low = w_low.dtype if w_low is not None else None  # float32 where bf16 products are emulated
    shape = (w.shape[0], hc.shape[0])
    z_t = bufs.get("z", shape, torch.float32, w)
    if w_low is None:
        torch.mm(w, hc.t(), out=z_t)
    else:
        z_low = bufs.get("z_low", shape, low, w)
        z_t.copy_(bf16_matmuls.round_(torch.mm(w_low, bf16_matmuls.operand(hc.t()), out=z_low)))
    scale = fused_ops.softmax_xent_columns_(z_t, targets, weights, nll)
    if w_low is not None:
        bf16_matmuls.round_(z_low.copy_(z_t))
    if grad_h is not None:
        # (W^T @ z_t)^T: the product with the tall [d, rows] output, 14.7-15.0 ms a chunk against
        # 15.4-17.1 for z_t^T @ W at the tiny-cpu recipe's shapes (2 threads)
        g = (w.t() @ z_t).t() if w_low is None else bf16_matmuls.result(z_low.t() @ w_low)
        torch.mul(g, scale[:, None], out=grad_h[r0:r0 + len(targets)])
    if grad_w is not None:
        scaled = torch.mul(hc, scale[:, None], out=bufs.get("scaled", tuple(hc.shape), hc.dtype, hc))
        if w_low is None and r0 == 0:  # the first chunk writes the gradient: no zero-filled start
            torch.mm(z_t, scaled, out=grad_w)
        elif w_low is None:
            grad_w.addmm_(z_t, scaled)
        else:  # the bf16 product, accumulated in float32, each through a reused buffer (`+=` would cast into a new one)
            dw_low = torch.mm(z_low, bf16_matmuls.operand(scaled), out=bufs.get("dw_low", grad_w.shape, low, w))
            bf16_matmuls.round_(dw_low)
            grad_w += bufs.get("dw", grad_w.shape, grad_w.dtype, w).copy_(dw_low)


class _WeightedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, softcap):
        dtype = _compute_dtype(weight)
        h, w = hidden.to(dtype), weight.to(dtype)
        N = h.shape[0]
        nll = torch.empty(N, dtype=_accumulate_dtype(dtype), device=h.device)
        step = chunk_rows(w.shape[0], h.device)
        transposed = softcap is None and fused_ops.cpu_float32(h, w, nll)
        w_low = bf16_matmuls.operand(w) if transposed and bf16_matmuls.active() else None
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:  # the float32 transposed path's first chunk writes it whole
            written = transposed and w_low is None and N > 0
            grad_w = (torch.empty if written else torch.zeros)(weight.shape, dtype=_accumulate_dtype(dtype),
                                                               device=weight.device)
        bufs = _Buffers()
        for r0 in range(0, N, step):
            hc = h[r0:r0 + step]
            if transposed:
                _transposed_chunk(hc, w, w_low, targets[r0:r0 + step], weights[r0:r0 + step], nll[r0:r0 + step],
                                  grad_h, grad_w, r0, bufs)
                continue
            z, t = _chunk_logits(hc, w, softcap)
            g = _nll_and_grad_(z, t, targets[r0:r0 + step], weights[r0:r0 + step], nll[r0:r0 + step])
            g = g.to(dtype)
            if grad_h is not None:
                grad_h[r0:r0 + step] = g @ w
            if grad_w is not None:
                if g.dtype == grad_w.dtype:
                    grad_w.addmm_(g.t(), hc)
                else:  # accumulate low-precision products in float32
                    grad_w += (g.t() @ hc).to(grad_w.dtype)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        ctx.mark_non_differentiable(nll)
        return (nll * weights).sum(), nll

    @staticmethod
    def backward(ctx, grad_total, _grad_nll):
        grad_h, grad_w = ctx.saved_tensors
        # scaled in place: a fresh copy of the head's gradient (21 MB at the tiny-cpu recipe's
        # shapes, 671 MB for Gemma's 262k vocabulary) cost a pass and new pages. A second backward
        # through the same graph (retain_graph) then stops at the saved tensors' version check.
        return (None if grad_h is None else grad_h.mul_(grad_total.to(grad_h.dtype)),
                None if grad_w is None else grad_w.mul_(grad_total.to(grad_w.dtype)), None, None, None)


def weighted_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i weights_i * nll_i, the per-position nll [N]) with logits hidden [N, d] @ weight[V, d]^T.

    Differentiable in `hidden` and `weight` through the total only (the per-position NLL is for
    reporting). Equal to cross-entropy over the materialised logits up to float rounding.
    """
    weights = weights.to(_accumulate_dtype(_compute_dtype(weight)))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _WeightedNLL.apply(hidden, weight, targets, weights, softcap)
    nll = token_nll(hidden, weight, targets, softcap)
    return (nll * weights).sum(), nll
