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


# leaves the context first thing, as a notebook's `run()` would, then allocates and frees 4 MB tensors
# (inference after training); prints their page faults
AFTER = """
import contextlib, resource, sys, torch
from codegemma.train.allocator import freed_memory_kept
def step():
    a = torch.ones(2**20)
    return a + 1
with freed_memory_kept() if sys.argv[1] == "keep" else contextlib.nullcontext() as applied:
    step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_after_the_context_allocations_do_not_map_fresh_pages_each_time():
    """mallopt turns glibc's moving mmap threshold off for the rest of the process; putting the
    thresholds back to their starting values left every block of 128 KB or more mmapped and faulted
    in page by page: 20 steps of two 4 MB tensors took ~41,000 faults (every page) where a process
    that never entered the context takes a few thousand."""
    def after(mode):
        out = subprocess.run([sys.executable, "-c", AFTER, mode], capture_output=True, text=True, check=True).stdout
        applied, faults = out.split()
        return applied, int(faults)

    applied, kept = after("keep")
    if applied != "True":
        pytest.skip("not glibc")
    every_page = 20 * 2 * (4 << 20) // 4096
    assert kept < every_page / 4


def test_a_run_leaves_the_process_its_thread_count(tmp_path):
    """`train.threads` applied to the whole process and stayed after `run()` returned: a notebook (or
    a test session) calling it went on with the run's thread count."""
    import torch

    from codegemma.train import recipe as recipe_mod
    from codegemma.train.run import run

    from .conftest import recipe_toml, write_shards

    shards = write_shards(tmp_path / "shards", n=16)
    toml = recipe_toml(tmp_path / "run", shards, 2).replace("batch_size = 4", "batch_size = 4\nthreads = 1")
    (tmp_path / "r.toml").write_text(toml)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(recipe_mod.load(tmp_path / "r.toml", []))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
