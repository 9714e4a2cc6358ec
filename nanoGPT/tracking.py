"""Optional experiment tracking: rank 0 mirrors every log.jsonl line to Weights & Biases.

The local files (``log.jsonl``, ``status.json``, checkpoints) are always written and are what
the later stages read; wandb only mirrors them, when the run config says ``log.wandb = true``.
wandb is imported only then, so a run without it neither needs the package nor pays for its
import. ``WANDB_MODE=offline`` needs no network or account: the wandb run is written into the
run directory (``<run dir>/wandb/offline-run-*``) and ``wandb sync`` uploads it later.

A resumed run (after a kill or a requeue) continues the same wandb run: its id is derived from
the run directory, and the steps the resumed run redoes, mirrored before it stopped, are not
sent twice (wandb rejects steps that go backwards). A mirror must never stop the training: if
wandb fails (slurm's SIGTERM reaches its service process too, before the run checkpoints), the
tracker says so once and stops mirroring.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from .config import RunConfig


class Tracker:
    """Does nothing unless enabled; ``log`` takes the records that go into log.jsonl."""

    def __init__(self, cfg: RunConfig, enabled: bool):
        self.run = None
        if not enabled:
            return
        import wandb  # only here: tracking is an extra (pip install -e ".[wandb]")

        run_dir = cfg.run_dir.resolve()
        self.run = wandb.init(project=cfg.log.wandb_project, name=cfg.name, group=Path(cfg.out_dir).name,
                              id=hashlib.sha256(str(run_dir).encode()).hexdigest()[:16], resume="allow",
                              dir=run_dir, config=cfg.to_dict())

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None and record["step"] >= self.run.starting_step:
            self._call(self.run.log, {k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, state: str) -> None:
        def close(run) -> None:
            run.summary["state"] = state
            run.finish()

        if self.run is not None:
            self._call(close, self.run)

    def _call(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever wandb raises, the local logs carry on
            print(f"warning: wandb failed ({type(e).__name__}: {e}); the run goes on without mirroring to it", file=sys.stderr)
            self.run = None
