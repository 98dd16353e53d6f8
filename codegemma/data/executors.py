"""Run per-repository tasks: in this process, on local cores, or as Ray tasks across machines.

Every executor yields (task, result) as tasks finish, in any order; the pipeline never depends on
that order. Ray workers must see the same work directory (a shared filesystem on a cluster).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterator, Sequence

from codegemma.errors import CodegemmaError


def _init_worker():
    # worker processes must not start their own tokenizer thread pools on top of the process pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class LocalExecutor:
    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[tuple, object]]:
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield task, fn(*task)
            return
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker) as pool:
            # keep a bounded number of tasks in flight so a huge corpus does not queue all at once
            pending, queue = {}, list(reversed(tasks))
            while queue or pending:
                while queue and len(pending) < 4 * self.workers:
                    task = queue.pop()
                    pending[pool.submit(fn, *task)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    yield task, future.result()


class RayExecutor:
    def __init__(self, address: str | None = None, workers: int = 0):
        try:
            import ray
        except ImportError:
            raise CodegemmaError("executor 'ray' needs the ray package: pip install 'codegemma[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count()}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kwargs)

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[tuple, object]]:
        remote = self.ray.remote(fn)
        refs = {remote.remote(*task): task for task in tasks}
        while refs:
            done, _ = self.ray.wait(list(refs), num_returns=1)
            for ref in done:
                yield refs.pop(ref), self.ray.get(ref)


def make_executor(kind: str, workers: int = 0, address: str | None = None):
    if kind == "ray":
        return RayExecutor(address, workers)
    return LocalExecutor(workers)
