"""C kernels for what PyTorch has no operator for, compiled on first use.

`block_gemv.c` multiplies float32 activations by float32 weights that are stored as GGUF-style
blocks: one integer code per weight plus a scale (and offset) per group (see the file).
`decode_step.c` runs a whole decoder layer for one new token per row on those weights.
`train_ops.c` holds fused forward and backward kernels for training (`codegemma.fused_ops`).
`cpu_clock.c` measures the core's clock, which CPU MFU needs where the system hides it. All are built once
with the machine's C compiler into `$CODEGEMMA_CACHE/kernels` and loaded through ctypes, which
releases the GIL during a call. Where no compiler works, `available()` is False and callers keep
using plain float32 weights and PyTorch's ops; `CODEGEMMA_KERNELS=0` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("block_gemv.c", "decode_step.c", "train_ops.c", "cpu_clock.c")]
MAX_ROWS = 16  # up to this many rows of x the kernel beats a float32 GEMM reading 4x the bytes

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False


def cpu_flags() -> str:
    """The CPU's instruction-set flags line, what -march=native depends on: a library built for
    one CPU may not run on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str, target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", *map(str, SOURCES), "-o", tmp, "-lm"]
        subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        os.replace(tmp, target)  # a concurrent build of the same source writes the same bytes
    finally:
        Path(tmp).unlink(missing_ok=True)


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None where that is impossible."""
    global _library, _tried
    with _lock:
        if _tried:
            return _library
        _tried = True
        if os.environ.get("CODEGEMMA_KERNELS", "1") == "0":
            return None
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            return None
        from codegemma.checkpoints.loading import cache_root

        key = hashlib.sha1(b"".join(p.read_bytes() for p in SOURCES) +
                           f"{compiler}|{platform.machine()}|{cpu_flags()}".encode())
        target = cache_root() / "kernels" / f"codegemma-kernels-{key.hexdigest()[:16]}.so"
        try:
            if not target.is_file():
                _build(compiler, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            warnings.warn(f"codegemma: C kernels unavailable, float32 decoding reads plain weights and training "
                          f"uses PyTorch's elementwise ops "
                          f"({detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__})")
            return None
        lib.block_gemv.restype = None
        lib.block_gemv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_int]
        lib.decode_layer.restype = None
        lib.decode_layer.argtypes = [ctypes.POINTER(Layer), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                     ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        _declare_train_ops(lib)
        lib.cpu_clock_hz.restype, lib.cpu_clock_hz.argtypes = ctypes.c_double, [ctypes.c_int64]
        _library = lib
        return lib


def _declare_train_ops(lib: ctypes.CDLL):
    p, n, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    for name, args in (("geglu_forward", [p, p, p, n, i]), ("geglu_backward", [p, p, p, p, p, n, i]),
                       ("rms_norm_forward", [p, p, p, p, n, n, f, i]),
                       ("rms_norm_backward", [p, p, p, p, p, p, p, n, n, i]),
                       ("residual_rms_norm_forward", [p, p, p, p, p, p, p, p, n, n, f, i]),
                       ("residual_rms_norm_backward", [p, p, p, p, p, p, p, p, p, p, p, p, p, p, n, n, i]),
                       ("softmax_xent_columns", [p, p, p, p, p, p, p, n, n, i]),
                       ("rope_forward", [p, p, p, p, n, n, n, n, n, i]), ("rope_backward", [p, p, p, p, n, n, n, n, n, i]),
                       ("attention_softmax_forward", [p, p, n, n, n, n, n, n, n, f, i]),
                       ("attention_softmax_backward", [p, p, p, p, n, n, n, n, n, f, i])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = None, args


class Blocks(ctypes.Structure):
    """decode_step.c's view of one block weight: codes, scale, offset (or NULL), rows, columns, group."""
    _fields_ = [("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("offset", ctypes.c_void_p),
                ("n", ctypes.c_int), ("k", ctypes.c_int), ("group", ctypes.c_int)]


class Layer(ctypes.Structure):
    """decode_step.c's `Layer`: sizes, switches and pointers to one decoder layer's weights."""
    _fields_ = [(name, ctypes.c_int) for name in ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "qk_norm",
                                                  "post_norms", "window")]
    _fields_ += [(name, ctypes.c_float) for name in ("eps", "query_scale", "softcap")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("input_norm", "post_attn_norm", "pre_ff_norm", "post_ff_norm",
                                                      "q_norm", "k_norm")]
    _fields_ += [(name, Blocks) for name in ("qkv", "o", "gate_up", "down")]


def available() -> bool:
    return library() is not None


@functools.cache
def cpu_clock_hz() -> float:
    """The clock of the core this runs on, measured (cpu_clock.c): the best of five runs of 20
    million one-cycle additions, about 30 ms in all. 0 without the kernels or off x86-64/AArch64."""
    lib = library()
    return max(lib.cpu_clock_hz(20_000_000) for _ in range(5)) if lib is not None else 0.0


def block_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 offset: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W.T in float32 for W[n, k] = scale[n, k // G] * codes[n, k] - offset[n, k // G].

    codes: int8 [N, K]; scale, offset: float32 [N, K // G], G a multiple of 16; all contiguous.
    """
    lib = library()
    if lib is None:
        raise RuntimeError("the block kernel is not available (see codegemma.kernels)")
    N, K = codes.shape
    group = K // scale.shape[1]
    shape = x.shape
    x = x.reshape(-1, K).to(torch.float32).contiguous()
    M = x.shape[0]
    xsum = x.view(M, -1, group).sum(-1) if offset is not None else x
    y = torch.empty(M, N, dtype=torch.float32)
    lib.block_gemv(x.data_ptr(), xsum.data_ptr(), M, K, codes.data_ptr(), scale.data_ptr(),
                   None if offset is None else offset.data_ptr(), N, group, y.data_ptr(), torch.get_num_threads())
    return y.view(*shape[:-1], N)
