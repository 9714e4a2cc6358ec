"""Preemption: SIGTERM or SIGUSR1 asks a run to checkpoint and stop at its next log step.

Slurm sends SIGTERM before it ends a job (preemption, ``scancel``, the time limit) and SIGUSR1
where the job asked for a warning (``--signal=B:USR1@SECONDS``; ``scripts/slurm/train.sbatch``
relays it to the training as SIGTERM, the signal torchrun forwards to its workers). A handler
that saved a checkpoint itself could run in the middle of an optimizer step, so this one only
records the signal; the training loop reads it at log steps, where the weights are whole and
the loss has just been checked for divergence (no checkpoint may hold diverged weights).

Under DDP every rank must stop at the same step, or the ranks that go on hang in their next
all-reduce: the flag is max-reduced over the ranks, at log steps, which synchronise anyway.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """``with Preemption() as p:`` installs the handlers for the block and restores the old ones after."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread set handlers
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum)

    def requested(self, world_size: int, device: torch.device) -> bool:
        """Whether any rank has received a signal. A collective under DDP: call it at the same
        step on every rank."""
        if world_size == 1:
            return self.received is not None
        flag = torch.tensor(float(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
