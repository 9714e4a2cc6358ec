"""wandb mirroring (nanoGPT/tracking.py): off by default and then never imported; on, with
WANDB_MODE=offline (no network, no account), the run directory holds a wandb run whose
history is exactly the lines of log.jsonl."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_run

ROOT = Path(__file__).resolve().parents[1]


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the offline wandb run in run_dir, read from its .wandb file: a
    LevelDB-style log (32 KiB blocks of [crc32 | length | kind] fragments) of protobuf records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.HasField("history"):
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def train_in_subprocess(cfg, tmp_path: Path, check: str = "pass") -> subprocess.CompletedProcess:
    """nanoGPT.train's main on cfg in a fresh interpreter, then the statement ``check``."""
    config = tmp_path / "run.toml"
    config.write_text(cfg.dumps())
    code = f"import sys; from nanoGPT.train import main; rc = main([{str(config)!r}]); {check}; sys.exit(rc)"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_wandb_offline_run_mirrors_log_jsonl(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 6}, log={"log_interval": 2, "wandb": True, "wandb_project": "pytest"})
    r = train_in_subprocess(cfg, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    log = [json.loads(line) for line in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [0, 2, 3, 4, 5]  # every 2nd step, and the checkpoint steps 3 and 5
    history = wandb_history(cfg.run_dir)
    assert [h["_step"] for h in history] == [x["step"] for x in log]
    for line, row in zip(log, history):
        assert {k: row[k] for k in line if k != "step"} == pytest.approx({k: v for k, v in line.items() if k != "step"})


def test_wandb_is_never_imported_when_off(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 2})
    assert cfg.log.wandb is False  # the default
    r = train_in_subprocess(cfg, tmp_path, check="assert 'wandb' not in sys.modules, 'wandb was imported'")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (cfg.run_dir / "log.jsonl").exists() and not (cfg.run_dir / "wandb").exists()


def test_training_outlives_wandb(tmp_path, shards):
    """Slurm's SIGTERM reaches wandb's service process too: the run must go on without it."""
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 20}, log={"log_interval": 1, "wandb": True})
    config = tmp_path / "run.toml"
    config.write_text(cfg.dumps())
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "nanoGPT.train", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = cfg.run_dir / "log.jsonl"
        deadline = time.time() + 120
        while not (log.exists() and log.read_text().count("\n") >= 2):
            assert time.time() < deadline and proc.poll() is None, "the run never logged"
            time.sleep(0.1)
        service = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "wandb-core"], capture_output=True, text=True).stdout.split()
        assert len(service) == 1, "wandb's service process not found"
        os.kill(int(service[0]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "warning: wandb failed" in out
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(20))
