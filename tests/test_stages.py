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
