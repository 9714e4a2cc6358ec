"""The training loop: learning, schedule, micro-batching, DDP. Kill/resume, divergence and bad
input are in test_faults.py."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoGPT.checkpoint import load_checkpoint
from nanoGPT.config import ConfigError
from nanoGPT.train import lr_at, micro_batch_size, train

from conftest import tiny_run

ROOT = Path(__file__).resolve().parents[1]

METHODS = [("baseline", 0.0), ("z-loss", 1e-4), ("mu-loss", 1e-1), ("mu-centering", 0.0), ("stablemax", 0.0),
           ("orthograd", 0.0)]


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method,gamma", METHODS)
def test_loss_goes_down_for_every_method(tmp_path, shards, method, gamma):
    cfg = tiny_run(tmp_path, shards, method={"name": method, "gamma": gamma}, schedule={"max_steps": 30})
    assert train(cfg) == "finished"
    log = read_log(cfg.run_dir)
    assert [r["step"] for r in log] == list(range(30))
    first, last = log[0]["ce"], sum(r["ce"] for r in log[-5:]) / 5
    assert first > math.log(50257) - 1.0  # an untrained model is near uniform
    assert last < first - 2.0, f"{method}: CE went from {first:.3f} to {last:.3f}"
    for r in log:
        assert r["loss"] == pytest.approx(r["ce"] + r["aux"], rel=1e-5)
        assert (r["aux"] > 0) == (method in ("z-loss", "mu-loss"))
    if method == "mu-centering":
        E = load_checkpoint(cfg.run_dir / "ckpt.pt")["model"]["lm_head.weight"].double()
        assert E.mean(0).abs().max() < 1e-7
        assert all(r["mu_out_norm"] < 1e-5 for r in log)


@pytest.mark.parametrize("method", ["baseline", "stablemax"])
def test_log_steps_have_diagnostics_and_the_others_change_nothing(tmp_path, shards, method):
    """Between log steps the loss head skips its logit diagnostics (for StableMax an exponential
    per logit): the logged steps still carry all of them, finite, and the trained weights are
    the same, bit for bit, as when every step computes them."""
    runs = {}
    for interval in (1, 4):
        cfg = tiny_run(tmp_path / f"every{interval}", shards, method={"name": method},
                       schedule={"max_steps": 10}, log={"log_interval": interval, "checkpoint_interval": 5})
        assert train(cfg) == "finished"
        runs[interval] = cfg
    log = read_log(runs[4].run_dir)
    assert [r["step"] for r in log] == [0, 4, 8, 9]  # every 4th, each checkpoint's (4, 9) and the last
    for r in log:
        for key in ("logit_mean", "logit_std", "logit_max", "lse_sq_mean", "ce", "aux", "loss"):
            assert math.isfinite(r[key]), (r["step"], key)
    every = {r["step"]: r for r in read_log(runs[1].run_dir)}
    for r in log:
        for key in ("loss", "logit_mean", "lse_sq_mean"):
            assert r[key] == every[r["step"]][key]
    final = [load_checkpoint(cfg.run_dir / "ckpt.pt")["model"] for cfg in runs.values()]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def test_schedule_warmup_then_cosine_to_min_lr(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, optim={"lr": 1.0}, schedule={"max_steps": 101, "warmup_steps": 10, "min_lr": 0.1})
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    # halfway through the decay the cosine is at the midpoint of lr and min_lr
    assert lr_at(10 + 45, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("scale,batch,world,memory,expected", [
    ("16M", 64, 1, None, (64, 1)), ("221M", 64, 1, None, (16, 4)), ("16M", 48, 1, None, (48, 1)), ("16M", 64, 4, None, (16, 1)),
    ("109M", 64, 2, None, (32, 1)), ("109M", 64, 4, None, (16, 1)), ("57M", 7, 1, None, (7, 1)), ("221M", 48, 1, None, (16, 3)),
    # the measured peaks decide on smaller GPUs: 109M needs 29.84 GiB at 32 (90% of 33.2 GiB),
    # so 32 on an 80 GB GPU, 16 on a 32 GiB GPU (14.9 <= 28.8), 8 on a 16 GiB GPU (7.5 <= 14.4)
    ("109M", 64, 1, 79.6, (32, 2)), ("109M", 64, 1, 32.0, (16, 4)), ("109M", 64, 1, 16.0, (8, 8)),
    ("16M", 64, 1, 8.0, (32, 2)), ("221M", 64, 1, 4.0, (1, 64)),
])
def test_automatic_micro_batch(tmp_path, shards, scale, batch, world, memory, expected):
    cfg = tiny_run(tmp_path, shards, model={"scale": scale}, batch={"batch_size": batch})
    assert micro_batch_size(cfg, world, memory) == expected


def test_micro_batch_accumulation_matches_one_big_batch(tmp_path, shards):
    """Gradient accumulation over 4 micro-batches gives the same step as one batch of 4 (float32)."""
    whole = tiny_run(tmp_path / "a", shards, batch={"batch_size": 4, "micro_batch_size": 4}, schedule={"max_steps": 3})
    parts = tiny_run(tmp_path / "b", shards, batch={"batch_size": 4, "micro_batch_size": 1}, schedule={"max_steps": 3})
    train(whole), train(parts)
    a, b = load_checkpoint(whole.run_dir / "ckpt.pt")["model"], load_checkpoint(parts.run_dir / "ckpt.pt")["model"]
    # Summation order differs, and Adam divides by sqrt(v): where a gradient is ~0 a float32
    # rounding difference becomes a visible fraction of one step (lr = 1e-2). 1e-4 is 1% of a step.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    assert [r["loss"] for r in read_log(whole.run_dir)] == pytest.approx([r["loss"] for r in read_log(parts.run_dir)], rel=1e-5)


def test_batch_not_divisible_by_processes_is_an_error(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, batch={"batch_size": 6})
    with pytest.raises(ConfigError, match="batch.batch_size"):
        micro_batch_size(cfg, 4)


# Run under torchrun in place of `-m nanoGPT.train`: trains as that does, then saves each rank's
# own weights (only rank 0 writes checkpoints), so that the replicas can be compared.
RANK_PROBE = """
import os, sys, torch
from nanoGPT import train
from nanoGPT.config import load_config
built = []
class Recorded(train.GPT):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        built.append(self)
train.GPT = Recorded
train.train(load_config(sys.argv[1]))
torch.save(built[0].state_dict(), os.path.join(sys.argv[2], "rank" + os.environ["RANK"] + ".pt"))
"""


@pytest.mark.slow
def test_torchrun_ddp_matches_single_process(tmp_path, shards):
    """Two gloo processes under the real torchrun, same global batch: bit-identical weights on
    both ranks, and the losses and weights of one process."""
    single = tiny_run(tmp_path / "single", shards, schedule={"max_steps": 4}, log={"log_interval": 1, "checkpoint_interval": 4})
    train(single)
    ddp = tiny_run(tmp_path / "ddp", shards, schedule={"max_steps": 4}, log={"log_interval": 1, "checkpoint_interval": 4})
    (tmp_path / "run.toml").write_text(ddp.dumps())
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(tmp_path / "probe.py"), str(tmp_path / "run.toml"), str(tmp_path)], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "x 2 processes" in r.stdout
    rank0, rank1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the replicas never drift apart
    assert [x["loss"] for x in read_log(ddp.run_dir)] == pytest.approx([x["loss"] for x in read_log(single.run_dir)], rel=1e-5)
    a, b = load_checkpoint(single.run_dir / "ckpt.pt")["model"], load_checkpoint(ddp.run_dir / "ckpt.pt")["model"]
    assert all(torch.equal(b[k], rank0[k]) for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)  # all-reduce order vs one sum; see accumulation test


def worker_pids(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the training processes a torchrun agent started."""
    out = {}
    for pid in subprocess.run(["pgrep", "-P", str(agent_pid)], capture_output=True, text=True).stdout.split():
        try:
            env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:  # it has just exited
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = int(pid)
    return out


@pytest.mark.slow
def test_ddp_preemption_stops_every_rank_at_one_step_and_resumes(tmp_path, shards):
    """SIGTERM to rank 1 alone: both ranks stop at the same log step with a checkpoint (rank 0
    would otherwise hang in its next all-reduce), and the resumed run ends bit for bit where an
    uninterrupted one does."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nanoGPT.train"]
    runs = {}
    for name in ("reference", "preempted"):
        cfg = tiny_run(tmp_path / name, shards, schedule={"max_steps": 30}, log={"log_interval": 2, "checkpoint_interval": 1000})
        (tmp_path / f"{name}.toml").write_text(cfg.dumps())
        runs[name] = cfg.run_dir
    r = subprocess.run([*torchrun, str(tmp_path / "reference.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    run_dir = runs["preempted"]
    agent = subprocess.Popen([*torchrun, str(tmp_path / "preempted.toml")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        log = run_dir / "log.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 2):
            assert time.time() < deadline and agent.poll() is None, "the DDP run never logged"
            time.sleep(0.1)
        os.kill(worker_pids(agent.pid)[1], signal.SIGTERM)
        out, _ = agent.communicate(timeout=120)
    finally:  # torchrun's workers have sessions of their own: a hung one outlives the agent
        for pid in worker_pids(agent.pid).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.kill()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and 2 < status["step"] < 30, out
    assert read_log(run_dir)[-1]["step"] == status["step"] - 1  # stopped right after a log step
    r = subprocess.run([*torchrun, str(tmp_path / "preempted.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming at step {status['step']}" in r.stdout

    drop = ("tokens_per_s", "train_time")
    strip = lambda log: [{k: v for k, v in x.items() if k not in drop} for x in log]
    assert strip(read_log(run_dir)) == strip(read_log(runs["reference"]))
    a, b = (load_checkpoint(d / "ckpt.pt")["model"] for d in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)