"""One model, many clients: a bounded queue in front of a single worker thread.

The worker takes the oldest job. If more non-streaming completion jobs are waiting, they run as
one batch (one forward pass per token for all of them); a lone job runs by itself, which keeps
the engine's prefix cache warm for the editor that sent it. Every job carries a cancel flag (set
when its client disconnects) and a deadline (the per-request time limit), checked between tokens.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from codegemma.complete.pipeline import Completer


class QueueFull(Exception):
    """The queue is at capacity; the client should retry later."""


@dataclass
class Job:
    """`work(on_delta, cancel, deadline)` runs on the worker; `batchable` jobs carry a CompletionRequest."""

    work: Callable[[Callable[[str], None] | None, Callable[[], bool], float], Any]
    loop: asyncio.AbstractEventLoop
    deadline: float
    streaming: bool = False
    batch_request: Any = None  # a CompletionRequest when the job can share a batch
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("delta", str) / ("done", value) / ("error", exc)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def post(self, kind: str, value: Any):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self):
        self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set()


class Scheduler:
    def __init__(self, completer: Completer, max_queue: int = 32, max_batch: int = 8,
                 on_batch: Callable[[int], None] | None = None):
        self.completer = completer
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="codegemma-worker", daemon=True)
        self._pending: list[Job] = []
        self.busy = False
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize() + len(self._pending)

    def submit(self, job: Job):
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None

    def close(self):
        self._queue.put(None)
        self._thread.join(timeout=10)

    # ---- worker ------------------------------------------------------------------------------
    def _next(self) -> Job | None:
        return self._pending.pop(0) if self._pending else self._queue.get()

    def _loop(self):
        while True:
            job = self._next()
            if job is None:
                return
            self.busy = True
            try:
                if job.batch_request is not None and not job.streaming:
                    batch = [job] + self._take_batchable()
                    if len(batch) > 1:
                        self._run_batch(batch)
                        continue
                self._run_one(job)
            finally:
                self.busy = False

    def _take_batchable(self) -> list[Job]:
        taken: list[Job] = []
        while len(taken) + 1 < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._pending.append(job)
                break
            if job.batch_request is not None and not job.streaming:
                taken.append(job)
            else:
                self._pending.append(job)  # keeps its place for the next turn
        return taken

    def _expired(self, job: Job) -> bool:
        if job.cancelled.is_set():
            job.post("error", asyncio.CancelledError())
            return True
        if time.monotonic() > job.deadline:
            job.post("error", TimeoutError("the request timed out while waiting in the queue"))
            return True
        return False

    def _run_one(self, job: Job):
        if self._expired(job):
            return
        on_delta = (lambda text: job.post("delta", text)) if job.streaming else None
        try:
            job.post("done", job.work(on_delta, job.should_stop, job.deadline))
        except BaseException as exc:  # noqa: BLE001 - any failure belongs to this request, not the server
            job.post("error", exc)

    def _run_batch(self, jobs: list[Job]):
        jobs = [j for j in jobs if not self._expired(j)]
        if not jobs:
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        try:
            results = self.completer.run_batch([j.batch_request for j in jobs],
                                               cancel=lambda: all(j.cancelled.is_set() for j in jobs),
                                               deadline=min(j.deadline for j in jobs))
        except BaseException:  # noqa: BLE001 - fall back to one by one, so one bad request fails alone
            for job in jobs:
                self._run_one(job)
            return
        for job, result in zip(jobs, results):
            job.post("done", result)
