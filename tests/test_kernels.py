"""The block kernel (codegemma.kernels) against a dense float32 product with the same weights."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess

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


def instruction_sets():
    """The x86-64 levels this CPU runs: the portable loop, the AVX2 and the AVX-512 paths."""
    flags = set(kernels.cpu_flags().split())
    levels = [("portable", "x86-64")]
    if {"avx2", "fma"} <= flags:
        levels.append(("avx2", "x86-64-v3"))
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        levels.append(("avx512", "x86-64-v4"))
    return levels


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 levels")
@pytest.mark.parametrize("name,march", instruction_sets(), ids=[name for name, _ in instruction_sets()])
def test_every_instruction_set_path_gives_the_float32_product(tmp_path, name, march):
    """`-march=native` picks one of block_gemv.c's paths; each one this CPU can run is built and checked."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    source = kernels.SOURCES[0]
    library = tmp_path / f"block_gemv_{name}.so"
    subprocess.run([compiler, "-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", str(source), "-o",
                    str(library)], check=True, capture_output=True)
    block_gemv = ctypes.CDLL(str(library)).block_gemv
    block_gemv.restype = None
    for rows, group, with_offset in [(1, 32, True), (3, 32, False), (4, 16, False), (7, 32, True)]:
        codes, scale, offset, dense = block_weight(48, 256, group, with_offset)
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
        xsum = x.view(rows, -1, group).sum(-1).contiguous()
        y = torch.empty(rows, 48)
        block_gemv(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(xsum.data_ptr()), rows, 256,
                   ctypes.c_void_p(codes.data_ptr()), ctypes.c_void_p(scale.data_ptr()),
                   ctypes.c_void_p(offset.data_ptr() if offset is not None else None), 48, group,
                   ctypes.c_void_p(y.data_ptr()), 1)
        want = x.double() @ dense.double().T
        assert (y.double() - want).abs().max() <= 1e-5 * want.abs().max(), (name, rows, group, with_offset)
