import subprocess
import sys

import pytest

from codegemma.train import allocator

# the same steps over and over, as training does: allocates and frees 128 MB tensors; prints the page
# faults of the last five steps, and the resident memory after leaving the context
PROBE = """
import contextlib, resource, sys, torch
from codegemma.train.allocator import freed_memory_kept
def step():
    a = torch.ones(2**25)
    return torch.ones(2**25) + a
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
with freed_memory_kept() if sys.argv[1] == "keep" else contextlib.nullcontext() as applied:
    for _ in range(6):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    inside = rss_mb()
print(applied, faults, inside, rss_mb())
"""


def _probe(mode: str) -> tuple[str, int, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, faults, inside, after = out.split()
    return applied, int(faults), int(inside), int(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults_then_returned():
    """Each 128 MB tensor maps fresh pages (32k faults each) by default; inside the context the
    heap is reused, and on leaving it the kept memory goes back to the system."""
    _, default, _, _ = _probe("default")
    applied, kept, inside, after = _probe("keep")
    if applied != "True":
        pytest.skip("not glibc")
    assert default > 5 * 3 * 30_000
    assert kept < default / 10
    assert after < inside - 256  # at least two of the three 128 MB blocks released


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    with allocator.freed_memory_kept() as applied:
        assert applied is False
