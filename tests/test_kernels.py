"""The block kernel (codegemma.kernels) against a dense float32 product with the same weights."""

from __future__ import annotations

import pytest
import torch

from codegemma import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the block kernel")


def block_weight(n, k, group, with_offset, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-32, 32, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, k // group, generator=g) * 0.01
    offset = torch.rand(n, k // group, generator=g) * 0.1 if with_offset else None
    dense = (codes.float().view(n, -1, group) * scale[..., None]).view(n, k)
    if offset is not None:
        dense = dense - offset.repeat_interleave(group, dim=1)
    return codes, scale, offset, dense


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("group,with_offset", [(32, False), (32, True), (16, False)])
def test_block_matmul_is_the_float32_product(rows, group, with_offset):
    codes, scale, offset, dense = block_weight(96, 640, group, with_offset)
    x = torch.randn(rows, 640, generator=torch.Generator().manual_seed(1))
    got = kernels.block_matmul(x, codes, scale, offset)
    want = x.double() @ dense.double().T  # exact reference: only float32 summation error remains
    assert got.dtype == torch.float32 and got.shape == (rows, 96)
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_block_matmul_keeps_leading_dimensions():
    codes, scale, offset, dense = block_weight(64, 256, 32, True)
    x = torch.randn(2, 3, 256)
    assert torch.allclose(kernels.block_matmul(x, codes, scale, offset), x @ dense.T, rtol=1e-5, atol=1e-5)


def test_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CODEGEMMA_KERNELS", "0")
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    assert not kernels.available()
    with pytest.raises(RuntimeError, match="not available"):
        kernels.block_matmul(torch.zeros(1, 32), *block_weight(16, 32, 32, False)[:3])
