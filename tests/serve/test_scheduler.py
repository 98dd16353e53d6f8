"""The worker thread: requests waiting together run as one batch, each as it would alone."""

from __future__ import annotations

import asyncio
import threading
import time

from codegemma.complete.pipeline import CompletionRequest
from codegemma.serve.scheduler import Job, Scheduler


def test_seeded_requests_sample_the_same_batched_or_alone(tiny_completer):
    def request(seed: int) -> CompletionRequest:
        return CompletionRequest(prefix="def add(a, b):\n    ", suffix="\n", path="a.py", max_new_tokens=12,
                                 temperature=1.0, seed=seed, multiline=True)

    alone = {seed: tiny_completer.run(request(seed)).text for seed in (7, 8)}
    batches: list[int] = []
    scheduler = Scheduler(tiny_completer, max_batch=8, on_batch=batches.append)
    gate = threading.Event()

    async def scenario():
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 60
        # the first job holds the worker, so the others are all waiting when it takes the next one
        scheduler.submit(Job(work=lambda *args: gate.wait(30), loop=loop, deadline=deadline))
        jobs = []
        for seed in (7, 7, 8):
            req = request(seed)
            jobs.append(Job(work=lambda on_delta, cancel, end, req=req: tiny_completer.run(req, on_delta, cancel, end),
                            loop=loop, deadline=deadline, batch_request=req))
            scheduler.submit(jobs[-1])
        gate.set()
        return [await job.events.get() for job in jobs]

    try:
        events = asyncio.run(scenario())
    finally:
        scheduler.close()
    assert batches == [3]
    assert [kind for kind, _ in events] == ["done"] * 3
    assert [c.text for _, c in events] == [alone[7], alone[7], alone[8]]
    assert alone[7] != alone[8]  # the seed matters, so the comparison above means something
