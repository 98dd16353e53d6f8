"""Run metrics: JSONL (the source of truth), TensorBoard scalars, and model-FLOPs utilisation.

`metrics.jsonl` gets one object per logged event: {"step", "kind": "train"|"eval", ...}. A resumed
run appends to the same file and re-logs the steps after its checkpoint; readers keep the last
record of each (kind, step), which is what `read` returns. JSON has no NaN or infinity: a value that
is not finite (the step a run diverged on) is written as null, and `read` gives it back as nan.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import psutil
import torch

from codegemma import kernels
from codegemma.config import ModelConfig
from codegemma.errors import CodegemmaError
from codegemma.kernels import cpu_flags

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets. The first key that is
# part of the device's name wins, so a variant comes before the name it contains: the PCIe H100
# (756) before the SXM one, the L40 (181) after the L40S and before the L4.
# The V100 and T4 have no bf16 units (torch emulates bf16 there with float32 arithmetic), so a bf16
# run on them is measured against their float32 peak below.
_GPU_PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                  "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}
# float32 without tensor cores, what PyTorch's float32 products use unless TF32 is allowed
_GPU_PEAK_FP32 = {"H200": 67e12, "H100 PCIe": 51e12, "H100": 67e12, "A100": 19.5e12, "L40S": 91.6e12,
                  "L40": 90.5e12, "L4": 30.3e12, "A10": 31.2e12, "4090": 82.6e12, "3090": 35.6e12, "V100": 15.7e12,
                  "T4": 8.1e12}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention scores and values.

    Weights include the tied embedding once, as the output projection (the input lookup is free).
    Attention adds 12 * layers * heads * head_dim * seq_len (PaLM appendix B); local layers see at
    most their window.
    """
    d, hd = cfg.d_model, cfg.head_dim
    per_layer = d * hd * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.n_heads * hd * d + 3 * d * cfg.d_ff
    weights = cfg.n_layers * per_layer + cfg.vocab_size * d
    attn = 0
    for kind in cfg.layer_types:
        span = min(seq_len, cfg.sliding_window) if kind == "local" and cfg.sliding_window else seq_len
        attn += 12 * cfg.n_heads * hd * span
    return 6.0 * weights + attn


def peak_flops(device: torch.device, bf16: bool = False) -> float:
    """Peak FLOP/s of one device: data-sheet numbers for known GPUs (dense bf16 tensor cores with
    `bf16` where the GPU has them, else plain float32), an FMA estimate for CPUs.

    The CPU figure assumes two FMA units per core, 256-bit (32 float32 FLOPs per cycle) or, with
    `avx512f`, 512-bit (64), at the maximum clock over the cores this process may use; it is an
    upper bound, so CPU MFU is a lower bound on utilisation. Where the system does not say the
    maximum clock (virtual machines often report only a nominal one, below what the cores boost
    to), the clock is measured (`kernels.cpu_clock_hz`). With `bf16` on a CPU whose dot-product
    instructions take bf16 (`avx512_bf16`: two multiply-adds per float32 lane) the figure doubles;
    with AMX tiles (`amx_bf16`) it is Intel's 1,024 bf16 FLOPs per cycle and core; without either,
    bf16 products run at the float32 rate.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tables = (_GPU_PEAK_BF16, _GPU_PEAK_FP32) if bf16 else (_GPU_PEAK_FP32,)
        for table in tables:
            for key, value in table.items():
                if key in name:
                    return value
        return 0.0
    freq = psutil.cpu_freq()
    mhz = freq.max if freq else 0.0
    if not mhz:
        mhz = kernels.cpu_clock_hz() / 1e6 or (freq.current if freq else 0.0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = min(cores, torch.get_num_threads())
    flags = cpu_flags().split()
    per_cycle = 64 if "avx512f" in flags else 32
    if bf16 and "amx_bf16" in flags:
        per_cycle = 1024
    elif bf16 and "avx512_bf16" in flags:
        per_cycle *= 2
    return threads * (mhz or 2500.0) * 1e6 * per_cycle


class MetricsLogger:
    """Writes metrics from the main process only; other processes get a no-op logger.

    A run that continues from the checkpoint of `after_step` first drops what a stopped run logged
    after that step (from metrics.jsonl, and in TensorBoard through its purge step): those steps are
    trained and logged again, and each step should appear once. A line cut short by a kill goes too.
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True, after_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _keep_records_up_to(self.path, after_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=after_step + 1)

    def log(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        # Python would write NaN/Infinity, which strict JSON readers (JavaScript, Go, jq --strict) reject
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _keep_records_up_to(path: Path, step: int) -> None:
    """Rewrite `path` (atomically) without records after `step` and without lines that are not
    records (a line a kill cut short). A file whose first line is whole and no record is another
    program's: refused, not emptied."""
    lines = path.read_bytes().splitlines(keepends=True)
    if lines and lines[0].endswith(b"\n") and _step_of(lines[0]) is None:
        raise CodegemmaError(f"{path}: not a codegemma metrics log (its first line is no JSON record); move it "
                             "away, or choose another out_dir")
    kept = [line.rstrip(b"\n") + b"\n" for line in lines if (n := _step_of(line)) is not None and n <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(kept))
    tmp.replace(path)


def _step_of(line: bytes) -> int | None:
    """The step of a metrics record, None for a line that is not one (torn, blank, foreign)."""
    try:
        record = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step", 0)
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def read(path: str | Path, kind: str = "train") -> list[dict]:
    """The records of one kind, last write per step wins, in step order (null values as nan)."""
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # blank, or the last line of a run killed while writing it
                continue
            if isinstance(record, dict) and record.get("kind") == kind and isinstance(record.get("step"), int):
                by_step[record["step"]] = {k: math.nan if v is None else v for k, v in record.items()}
    return [by_step[s] for s in sorted(by_step)]
