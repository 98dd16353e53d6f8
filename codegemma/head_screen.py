"""The float32 argmax of the output head without reading the whole head.

Decoding one token of the default model reads 1.07 GB of float32 weights, and the tied head
(262,144 vocabulary rows) is 671 MB of it. Greedy decoding only needs the head's argmax. The
screen multiplies the hidden state by an 8-bit copy of the head (168 MB, the CPU int4 kernel
with two planes, see codegemma.quant), bounds the error of every coarse logit, and recomputes
in float32 only the rows whose exact logit could still be the largest: a handful per token
(mean 3, at most 49 on real code). The chosen token is the float32 argmax, not an approximation.

The bound for row i, with h the hidden state, h' its bfloat16 rounding, w_i the float32 row and
w'_i its 8-bit reconstruction:
    |h.w_i - h'.w'_i| <= |h| |w_i - w'_i| + |h - h'| |w'_i|          (Cauchy-Schwarz)
plus what the kernel adds: bfloat16 rounding of the dequantized weights (2^-9 relative, at most
2^-9 |h'| |w'_i| in the dot product), float accumulation (far below 1e-4 |h'| |w'_i|) and the
bfloat16 rounding of each plane's output (2^-9 of its magnitude, counted twice).
|w_i - w'_i| and |w'_i| are computed once, when the screen is built.
"""

from __future__ import annotations

import torch

from codegemma.quant import BLOCK_ROWS, GROUP, dequantize_groups, quantize_groups

MAX_ROWS = 16  # beyond this many hidden states the kernel stops beating a full float32 head
FILE = "head-screen.safetensors"


def supports(weight: torch.Tensor) -> bool:
    """The int4 kernel's layout needs rows in blocks of 64 and columns in groups of 32."""
    rows, cols = weight.shape
    return weight.dtype == torch.float32 and rows % BLOCK_ROWS == 0 and cols % GROUP == 0


class HeadScreen:
    """Not an nn.Module on purpose: it is derived data, kept out of the model's state_dict, and
    `Gemma.attach_head_screen` drops it as soon as the head's weight changes."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, error_norm: torch.Tensor,
                 coarse_norm: torch.Tensor):
        self.packed = packed  # 8-bit codes as two int4 planes (codegemma.quant)
        self.scales_and_zeros = scales_and_zeros
        self.error_norm = error_norm  # |w_i - w'_i|
        self.coarse_norm = coarse_norm  # |w'_i|

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> "HeadScreen":
        packed, scales_and_zeros = quantize_groups(weight, bits=8)
        error_norm, coarse_norm = [], []
        for start in range(0, weight.shape[0], 16384):  # in slices: bounded temporary memory
            rows = slice(start, start + 16384)
            approx = dequantize_groups(packed, scales_and_zeros, 2, rows, dtype=torch.float32)
            error_norm.append((weight[rows].float() - approx).norm(dim=1))
            coarse_norm.append(approx.norm(dim=1))
        return cls(packed, scales_and_zeros, torch.cat(error_norm), torch.cat(coarse_norm))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "HeadScreen":
        return cls(tensors["packed"], tensors["scales_and_zeros"], tensors["error_norm"], tensors["coarse_norm"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales_and_zeros": self.scales_and_zeros, "error_norm": self.error_norm,
                "coarse_norm": self.coarse_norm}

    def nbytes(self) -> int:
        """What one screened head pass reads."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] whose argmax is the float32 argmax of `hidden @ weight.T`.

        The candidate rows hold their float32 logits; every other row holds its coarse value,
        which is provably below the best candidate's exact logit.
        """
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1]).float()
        h_round = h.to(torch.bfloat16)
        planes = torch.ops.aten._weight_int4pack_mm_for_cpu(h_round, self.packed, GROUP, self.scales_and_zeros)
        planes = planes.float().view(h.shape[0], 2, -1)
        coarse = planes.sum(dim=1)
        h_round = h_round.float()
        h_norm = h.norm(dim=1, keepdim=True)
        slack = (h - h_round).norm(dim=1, keepdim=True) + (2 ** -9 + 1e-4) * h_round.norm(dim=1, keepdim=True)
        rounding = 2 ** -8 * planes.abs().sum(dim=1)
        bound = h_norm * self.error_norm + slack * self.coarse_norm + rounding + 1e-3
        floor = (coarse - bound).amax(dim=1, keepdim=True)  # some row's exact logit is at least this
        for row, candidates in enumerate(coarse + bound >= floor):
            idx = candidates.nonzero().squeeze(1)
            coarse[row, idx] = weight[idx].float() @ h[row]
        return coarse.view(*shape[:-1], -1)
