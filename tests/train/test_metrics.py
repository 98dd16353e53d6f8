from __future__ import annotations

import json

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


def test_a_continued_run_logs_each_step_once(tmp_path):
    """Continuing from the checkpoint of step 2, what a stopped run logged after it (steps 3-4, and a
    line its kill cut short) is dropped; TensorBoard hides the same steps through its purge step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = metrics.MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 5):
        first.log(step, "train", {"loss": float(step)})
    first.log(2, "eval", {"loss": 0.5})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "kind": "tra')  # the kill's torn line
    second = metrics.MetricsLogger(tmp_path, tensorboard=True, after_step=2)
    for step in range(3, 5):
        second.log(step, "train", {"loss": 10.0 + step})
    second.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [(r["step"], r["kind"], r["loss"]) for r in map(json.loads, lines)] == [
        (1, "train", 1.0), (2, "train", 2.0), (2, "eval", 0.5), (3, "train", 13.0), (4, "train", 14.0)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 5, "kind": "tra')  # read while a killed run's last line is torn
    assert [r["loss"] for r in metrics.read(tmp_path / "metrics.jsonl")] == [1.0, 2.0, 13.0, 14.0]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_gpu_peaks_tell_variants_apart(monkeypatch):
    """A PCIe H100 has 756 dense bf16 TFLOP/s, not the SXM part's 989; an L40 181, not the L4's 121."""
    names = {"NVIDIA H100 PCIe": 756e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA L40": 181e12,
             "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A10": 125e12}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert metrics.peak_flops(torch.device("cuda:0"), bf16=True) == peak, name
