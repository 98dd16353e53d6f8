from __future__ import annotations

import torch

from codegemma.train import metrics


def test_cpu_peak_for_bf16_follows_the_bf16_instructions(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma")
    fp32 = metrics.peak_flops(cpu)
    assert metrics.peak_flops(cpu, bf16=True) == fp32
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma avx512f")
    assert metrics.peak_flops(cpu) == metrics.peak_flops(cpu, bf16=True) == 2 * fp32  # 512-bit FMA units
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma avx512f avx512_bf16")
    assert metrics.peak_flops(cpu, bf16=True) == 4 * fp32 and metrics.peak_flops(cpu) == 2 * fp32
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile")
    assert metrics.peak_flops(cpu, bf16=True) == 32 * fp32  # AMX tiles: 1,024 bf16 FLOPs a cycle
