"""The status command (nanoGPT/status.py, scripts/status.sh): every state a run can be in."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from nanoGPT.checkpoint import hold_run_dir
from nanoGPT.config import expand_grid
from nanoGPT.status import main

ROOT = Path(__file__).resolve().parents[1]
STATES = ["done", "trained", "running", "preempted", "interrupted", "diverged", "not started", "corrupt", "missing"]


def make_grid(tmp_path: Path) -> Path:
    """A grid of one run per state, told apart by their learning rates."""
    grid = tmp_path / "grid.toml"
    lrs = ", ".join(f"{i + 1}e-3" for i in range(len(STATES)))
    grid.write_text(f'[grid]\nname = "status"\nscales = ["tiny"]\nlearning_rates = [{lrs}]\nout_dir = "{tmp_path / "out"}"\n'
                    '[base.schedule]\nmax_steps = 8\nwarmup_steps = 1\n')
    return grid


def write_run(cfg, state: str) -> None:
    """The files training and validation leave in a run directory in the given state."""
    if state == "missing":
        return
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(cfg.dumps())
    if state == "not started":
        return
    if state == "corrupt":
        (run_dir / "status.json").write_text('{"state": "runn')
        return
    steps = {"preempted": 5, "interrupted": 3, "running": 3, "diverged": 6}.get(state, 8)
    log = [{"step": s, "loss": 10.0 - s, "tokens_per_s": 1000.0} for s in range(steps)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    status = {"done": "finished", "trained": "finished", "interrupted": "running"}.get(state, state)
    (run_dir / "status.json").write_text(json.dumps({"state": status, "step": steps, **(
        {"diverged_at_step": steps - 1} if state == "diverged" else {})}))
    if state == "done":
        (run_dir / "validation.json").write_text(json.dumps({"test_loss": 4.25, "test_perplexity": 70.1, "val_tokens": 512}))


def test_every_state_is_reported(tmp_path, capsys):
    grid = make_grid(tmp_path)
    runs = dict(zip(STATES, expand_grid(grid)))
    for state, cfg in runs.items():
        write_run(cfg, state)
    slurm_log = tmp_path / "out" / "slurm" / f"{runs['interrupted'].name}.log"
    slurm_log.parent.mkdir()
    slurm_log.write_text("=== job 12_4 ...\n")
    with hold_run_dir(runs["running"].run_dir):  # as a live training process does
        assert main([str(grid)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["state", "steps", "loss", "run"]
    listed = {cfg.name: [line for line in out if not line.startswith(" ") and f" {cfg.name}" in line] for cfg in runs.values()}
    assert all(len(lines) == 1 for lines in listed.values()), listed
    listed = {name: lines[0] for name, lines in listed.items()}
    for state, cfg in runs.items():
        assert listed[cfg.name].startswith(f"{state} "), listed[cfg.name]
    assert re.search(r"done +8/8 +4\.2500 ", listed[runs["done"].name])
    assert re.search(r"preempted +5/8 +6\.0000 ", listed[runs["preempted"].name])
    assert listed[runs["interrupted"].name].endswith(f"(log: {slurm_log})")
    assert "status.json" in out[out.index(listed[runs["corrupt"].name]) + 1]  # the damage is named
    assert out[-1] == f"{len(STATES)} runs: " + ", ".join(f"1 {s}" for s in STATES)

    # Given the folder, the runs with a directory; the running one has lost its process.
    assert main([str(tmp_path / "out"), "--state", "interrupted,missing"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = sorted(next(cfg.name for cfg in runs.values() if f" {cfg.name}" in line) for line in out[1:-1])
    assert names == sorted([runs["running"].name, runs["interrupted"].name])
    assert all(line.startswith("interrupted ") for line in out[1:-1])
    assert out[-1].startswith(f"{len(STATES) - 1} runs: ") and "2 interrupted" in out[-1]


def test_status_script_and_unknown_grid(tmp_path):
    grid = make_grid(tmp_path)
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", "scripts/status.sh", str(grid)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"{len(STATES)} runs: {len(STATES)} missing"
    r = subprocess.run(["bash", "scripts/status.sh", "no_such_grid"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'no_such_grid' is neither a grid" in r.stderr
