from __future__ import annotations

import json
import math
import platform

import pytest
import torch

from codegemma import kernels
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


def test_cpu_peak_takes_the_measured_clock_where_the_system_hides_the_maximum(monkeypatch):
    """A virtual machine may report only a nominal clock (2.4 GHz) below the one its cores boost to:
    that peak was too low, and MFU too high (a median of 0.84 for the tiny-cpu recipe on 2 cores)."""
    from types import SimpleNamespace

    cpu = torch.device("cpu")
    monkeypatch.setattr(metrics, "cpu_flags", lambda: "flags\t\t: avx2 fma")
    monkeypatch.setattr(metrics.kernels, "cpu_clock_hz", lambda: 3.2e9)
    monkeypatch.setattr(metrics.psutil, "cpu_freq", lambda: SimpleNamespace(current=2445.0, min=0.0, max=0.0))
    threads = metrics.peak_flops(cpu) / (3.2e9 * 32)
    assert threads == round(threads) >= 1
    monkeypatch.setattr(metrics.psutil, "cpu_freq", lambda: SimpleNamespace(current=2445.0, min=0.0, max=3700.0))
    assert metrics.peak_flops(cpu) == threads * 3.7e9 * 32  # a stated maximum is kept


@pytest.mark.skipif(not kernels.available() or platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"),
                    reason="needs the C kernels on x86-64 or AArch64")
def test_the_measured_clock_is_a_cpu_clock():
    assert 0.5e9 < kernels.cpu_clock_hz() < 7e9


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


def test_a_float32_run_on_a_gpu_is_measured_against_the_float32_peak(monkeypatch):
    """A float32 run (train.precision = "fp32", or "auto" on a V100) does not use the bf16 tensor
    cores: its MFU is against the GPU's float32 peak, 67 TFLOP/s on an H100 SXM, not 989."""
    names = {"NVIDIA H100 80GB HBM3": 67e12, "NVIDIA H100 PCIe": 51e12, "NVIDIA A100-SXM4-80GB": 19.5e12,
             "Tesla V100-SXM2-16GB": 15.7e12, "Tesla T4": 8.1e12, "NVIDIA L4": 30.3e12}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert metrics.peak_flops(torch.device("cuda:0")) == peak, name
    # bf16 asked for by name on a V100 or T4 is emulated with float32 arithmetic: the same peak
    for name in ("Tesla V100-SXM2-16GB", "Tesla T4"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert metrics.peak_flops(torch.device("cuda:0"), bf16=True) == names[name], name


def _strict(text: str) -> list[dict]:
    """Parse JSON Lines as RFC 8259 does: no NaN, Infinity or -Infinity."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_values_that_are_not_finite_are_written_as_valid_json(tmp_path):
    """The step a run diverged on is logged with a NaN loss (and may have an infinite gradient norm):
    Python's json writes the bare words NaN and Infinity, which JavaScript, Go and pandas' strict
    readers refuse for the whole file. They are written as null, and `read` gives nan back."""
    log = metrics.MetricsLogger(tmp_path, tensorboard=False)
    log.log(1, "train", {"loss": 2.0, "grad_norm": 1.0})
    log.log(2, "train", {"loss": float("nan"), "grad_norm": float("inf"), "lr": torch.tensor(float("-inf"))})
    log.close()
    records = _strict((tmp_path / "metrics.jsonl").read_text())
    assert records[1] == {"step": 2, "kind": "train", "loss": None, "grad_norm": None, "lr": None}
    second = metrics.read(tmp_path / "metrics.jsonl")[1]
    assert math.isnan(second["loss"]) and math.isnan(second["grad_norm"])


def test_a_metrics_file_of_another_program_is_refused_not_emptied(tmp_path):
    """An out_dir holding someone else's metrics.jsonl (CSV, another tool's log) lost it silently:
    every line that was not a record was dropped as if a kill had torn it."""
    from codegemma.errors import CodegemmaError

    for content in (b"step,loss\n1,2.5\n", b"\xff\xfe{\"step\": 1}\n"):
        (tmp_path / "metrics.jsonl").write_bytes(content)
        with pytest.raises(CodegemmaError, match="metrics.jsonl: not a codegemma metrics log"):
            metrics.MetricsLogger(tmp_path, tensorboard=False)
        assert (tmp_path / "metrics.jsonl").read_bytes() == content


def test_lines_that_do_not_decode_or_are_not_records_are_dropped_on_resume(tmp_path):
    """Bytes that are not UTF-8 (a disk's garbage), a JSON line that is no object or has no integer
    step: dropped like a torn line, where they crashed the resume with a traceback."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "kind": "train", "loss": 1.0}\n\xff\x00\xfe\n[1, 2]\n'
                     b'{"step": "2", "kind": "train"}\n{"step": 2, "kind": "train", "loss": 2.0}\n'
                     b'{"step": 3, "kind": "train", "loss": 3.0}\n')
    metrics.MetricsLogger(tmp_path, tensorboard=False, after_step=2).close()
    assert [(r["step"], r["loss"]) for r in _strict(path.read_text())] == [(1, 1.0), (2, 2.0)]
    with open(path, "ab") as f:
        f.write(b"\xff\n7\n")
    assert [r["step"] for r in metrics.read(path)] == [1, 2]  # and `read` skips them too


def test_a_whole_last_record_without_its_newline_is_kept_apart_from_the_next(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "loss": 1.0}')  # a kill between the record and its newline
    log = metrics.MetricsLogger(tmp_path, tensorboard=False, after_step=1)
    log.log(2, "train", {"loss": 2.0})
    log.close()
    assert [r["loss"] for r in _strict(path.read_text())] == [1.0, 2.0]
