"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a cluster scheduler's preemption notice).

The step under way finishes, every process saves the checkpoint of that step, and the run ends with
`RunStopped`; running the same command again continues it exactly, as from any checkpoint. A
second signal of the same kind stops at once, as without this. Under torchrun the processes agree
on stopping after every step (one small all-reduce), so all of them save the same step even when
only one was signalled, or when torchrun follows a Ctrl-C with SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from codegemma.train import distributed
from codegemma.train.distributed import DistEnv

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(KeyboardInterrupt):
    """The run stopped on a signal after saving `checkpoint` (None on processes that do not write).

    A KeyboardInterrupt, as the signal asked: no `except Exception` on the way up swallows it, and
    a command that runs several trainings (`train experiment`) ends as on Ctrl-C."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f": checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}{where}; "
                         "the same command continues the run")


class StopSignals:
    """While entered, SIGINT and SIGTERM only ask the run to stop (`requested`), once each."""

    def __init__(self):
        self.received = 0
        self._seen: set[int] = set()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            for signum in SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    # ignored by whoever started us (`nohup`, a script's `cmd &` ignores SIGINT): a
                    # Ctrl-C meant for the foreground job must not stop this run
                    continue
                previous = signal.signal(signum, self._handle)
                # None: a handler installed outside Python, which cannot be put back; the default instead
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        # asked twice: the signal does what it did before, also after the other kind came first (a
        # Ctrl-C, then a scheduler's repeated SIGTERMs)
        if signum in self._seen:
            signal.signal(signum, self._previous.pop(signum))
            signal.raise_signal(signum)
            return
        self._seen.add(signum)
        self.received = self.received or signum

    def requested(self, env: DistEnv) -> int:
        """The signal any process received (0: none), the same on every process."""
        if not env.distributed:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=env.device)
        return int(distributed.all_reduce_max(flag, env).item())
