"""The numbered bash stages end to end on a small grid: train -> validate -> aggregate."""
from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_stages_produce_loss_overview(tmp_path, shards):
    grid = tiny_grid(tmp_path / "grid.toml", f"pytest_stages_{os.getpid()}", shards, ["baseline", "stablemax", "z-loss"],
                     [1e-2], batch={"batch_size": 2}, schedule={"max_steps": 4, "warmup_steps": 1},
                     data={"val_tokens": 100, "val_batch_size": 2})
    env = {**os.environ, "PYTHON": sys.executable}
    run = lambda *args: subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    try:
        for stage in ("0_run_training.sh", "1_prepare_validation.sh", "2_run_validation.sh", "3_aggregate.sh"):
            r = run(f"scripts/{stage}", str(grid))
            assert r.returncode == 0, f"{stage} failed:\n{r.stdout}\n{r.stderr}"
        csv_path = tmp_path / "out" / "loss_overview.csv"
        assert r.stdout.strip().splitlines()[-1] == f"wrote {csv_path}"
        with open(csv_path) as f:
            header = f.readline().strip().split(",")
            f.seek(0)
            rows = list(csv.DictReader(f))
        assert header[:3] == ["name", "test_loss", "test_perplexity"]
        assert sorted(r["method"] for r in rows) == ["baseline", "stablemax", "z-loss"]
        for row in rows:
            assert row["status"] == "done" and row["diverged"] == "False"
            assert math.exp(float(row["test_loss"])) == pytest.approx(float(row["test_perplexity"]))
            assert int(row["val_tokens"]) == 100
            assert row["test_loss_kind"] == ("stablemax" if row["method"] == "stablemax" else "softmax")
        # a run that never started is reported as missing, not dropped
        victim = next(p for p in (tmp_path / "out").iterdir() if p.is_dir() and "z-loss" in p.name)
        shutil.rmtree(victim)
        r = run("scripts/3_aggregate.sh", str(grid))
        assert r.returncode == 0, r.stderr
        with open(csv_path) as f:
            status = {row["method"]: row["status"] for row in csv.DictReader(f)}
        assert status == {"baseline": "done", "stablemax": "done", "z-loss": "missing"}
    finally:
        shutil.rmtree(ROOT / "configs" / "runs" / f"pytest_stages_{os.getpid()}", ignore_errors=True)


def test_unknown_grid_is_a_clear_error():
    r = subprocess.run(["bash", "scripts/0_run_training.sh", "no_such_grid"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode != 0
    assert "no_such_grid" in r.stderr and "is neither a grid" in r.stderr


FAKE_TRAINER = """#!/bin/bash
# stands in for python: "-m nanoGPT.train CONFIG": records when it ran and on which GPU, fails for r3
cfg=$(basename "$3" .toml)
echo "start $cfg ${CUDA_VISIBLE_DEVICES:-none} $(date +%s.%N)" >> "$EVENTS"
sleep 0.5
echo "end $cfg ${CUDA_VISIBLE_DEVICES:-none} $(date +%s.%N)" >> "$EVENTS"
echo "trained $cfg"
[ "$cfg" != r3 ]
"""


@pytest.mark.parametrize("gpus,per_gpu", [("g0,g1", 1), ("g0", 2), ("g0,g1", 2)])
def test_several_runs_at_once_never_overfill_a_gpu(tmp_path, gpus, per_gpu):
    """The launcher's slots: at most RUNS_PER_GPU runs on each GPU at any time, every slot
    used, every run's output in its log, and a failed run counted without stopping the rest."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(7):
        (runs / f"r{i}.toml").write_text("")
    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "GPUS": gpus, "RUNS_PER_GPU": str(per_gpu), "LOG_DIR": str(tmp_path / "logs"),
           "EVENTS": str(tmp_path / "events")}
    r = subprocess.run(["bash", "scripts/0_run_training.sh", str(runs)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"stage 0: 7 runs, 1 failed: {runs}/r3.toml"
    assert all((tmp_path / "logs" / f"r{i}.log").read_text() == f"trained r{i}\n" for i in range(7))
    events = sorted((float(t), kind, cfg, gpu) for kind, cfg, gpu, t in (line.split() for line in (tmp_path / "events").read_text().splitlines()))
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    for _, kind, _, gpu in events:
        running[gpu] = running.get(gpu, 0) + (1 if kind == "start" else -1)
        peak[gpu] = max(peak.get(gpu, 0), running[gpu])
    assert peak == {g: per_gpu for g in gpus.split(",")}
    assert sorted(cfg for _, kind, cfg, _ in events if kind == "start") == [f"r{i}" for i in range(7)]


def test_runs_per_gpu_must_be_a_positive_integer():
    r = subprocess.run(["bash", "scripts/0_run_training.sh", "tiny_cpu"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable, "RUNS_PER_GPU": "0"})
    assert r.returncode == 2 and "RUNS_PER_GPU must be a positive integer" in r.stderr
