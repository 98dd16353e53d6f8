"""Keep freed memory in the process for reuse while training on a CPU.

glibc's malloc hands blocks of 32 MB and more to the kernel on free and maps fresh pages for the next
one, so every large tensor a training step allocates (a 262k-vocabulary head's gradient is 671 MB)
is paid again in page faults, a few microseconds per 4 KB page: Gemma 3 270M's bf16 step on 2 cores
took 16-19 s with 1.15M faults, and 10.4-10.8 s with none once freed memory stays in the heap. A
training step allocates the same sizes every time, so the memory kept is its own peak, reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

# mallopt parameters and glibc's defaults, from malloc.h and malloc.c
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536
# glibc moves its mmap threshold up to the largest block freed, to at most this (32 MB on 64-bit
# systems), and its trim threshold to twice that: where a process that has freed large tensors ends up
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
_INT_MAX = 2**31 - 1


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    return libc


@contextmanager
def freed_memory_kept():
    """Inside: large blocks come from the heap and the heap's free top is never trimmed. Yields
    whether that applied (glibc only). On leaving, the kept memory is returned to the system and
    the thresholds are those glibc's defaults reach once large blocks have been freed.

    Any mallopt call on these thresholds turns glibc's moving mmap threshold off for good, so
    putting back the starting values (128 KB) would leave every later allocation of 128 KB or more
    (a notebook's inference after `run()`) mapping fresh pages and faulting on each of them: the
    threshold is set where the moving one would stand after a training run instead."""
    libc = _libc()
    applied = bool(libc) and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    try:
        yield applied
    finally:
        if libc:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
            libc.malloc_trim(0)
