import subprocess
import sys

import pytest

from codegemma.train import allocator

# the same steps over and over, as training does: allocates and frees 128 MB tensors; prints the page
# faults of the last five steps
PROBE = """
import resource, sys, torch
from codegemma.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    a = torch.ones(2**25)
    return torch.ones(2**25) + a
for _ in range(6):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    """Each 128 MB tensor maps fresh pages (32k faults each) by default, and reuses the heap once kept."""
    _, default = _faults("default")
    applied, kept = _faults("keep")
    if applied != "True":
        pytest.skip("not glibc")
    assert default > 5 * 3 * 30_000
    assert kept < default / 10


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
