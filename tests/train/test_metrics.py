from __future__ import annotations

import torch

from codegemma.config import preset
from codegemma.train import metrics


def test_flops_per_token_counts_weights_once_and_attention():
    cfg = preset("tiny-gemma")
    d, hd = cfg.d_model, cfg.head_dim
    layer = d * hd * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.n_heads * hd * d + 3 * d * cfg.d_ff
    weights = cfg.n_layers * layer + cfg.vocab_size * d
    assert metrics.flops_per_token(cfg, 64) == 6 * weights + 12 * cfg.n_layers * cfg.n_heads * hd * 64


def test_cpu_peak_doubles_for_bf16_only_with_bf16_dot_products(monkeypatch):
    cpu = torch.device("cpu")
    fp32 = metrics.peak_flops(cpu)
    monkeypatch.setattr(metrics, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512_bf16"})
    assert metrics.peak_flops(cpu, bf16=True) == 2 * fp32 and metrics.peak_flops(cpu) == fp32
    monkeypatch.setattr(metrics, "cpu_flags", lambda: {"avx2", "fma"})
    assert metrics.peak_flops(cpu, bf16=True) == fp32
