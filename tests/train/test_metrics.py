from __future__ import annotations

import torch

from codegemma.train import metrics


def test_cpu_peak_doubles_for_bf16_only_with_bf16_dot_products(monkeypatch):
    cpu = torch.device("cpu")
    fp32 = metrics.peak_flops(cpu)
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma avx512f avx512_bf16")
    assert metrics.peak_flops(cpu, bf16=True) == 2 * fp32 and metrics.peak_flops(cpu) == fp32
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma")
    assert metrics.peak_flops(cpu, bf16=True) == fp32
