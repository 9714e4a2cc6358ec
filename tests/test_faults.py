"""Fault injection: every way a grid of runs meets trouble, and what the code does about it.

Kill (SIGKILL) and resume, damaged checkpoints and a crash at each point of writing one, a
full disk, divergence (NaN and a loss spike), bad input of every kind, two runs in one
directory, an unwritable output folder, and damaged or half-written run directories in the
aggregate. Each test asserts the outcome the README's "What happens when …" table promises.
Run them alone with ``pytest -m faults``.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nanoGPT.checkpoint as checkpoint_mod
from nanoGPT import aggregate, train as train_mod, validate
from nanoGPT.checkpoint import CheckpointError, hold_run_dir, load_checkpoint, read_log, save_checkpoint
from nanoGPT.data import HEADER_INTS, MAGIC, VERSION, write_shard
from nanoGPT.results import capped_loss, read_runs
from nanoGPT.train import find_checkpoint, train

from conftest import tiny_run

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "train_time")  # the only fields a resumed run may change
PUBLISHED_COLUMNS = ["name", "test_loss", "test_perplexity", "test_loss_softmax", "test_loss_kind", "status", "diverged",
                     "diverged_at_step", "method", "scale", "lr", "gamma", "seed", "steps", "steps_done", "tokens", "time",
                     "tokens_per_s", "initial_loss", "last_train_loss", "mu_out_norm", "mu_in_norm", "emb_out_norm",
                     "emb_in_norm", "logit_mean", "logit_std", "lse_sq_mean", "val_tokens"]


def resumable_run(out_dir: Path, shards: dict[str, str]):
    """12 steps of 2 micro-batches (gradient accumulation), a log line every step, a checkpoint every 4.
    ⊥Grad and μ-centering: the optimizer wrapper and the after-step hook must resume too; a
    spike factor: so must the divergence monitor's moving average."""
    return tiny_run(out_dir, shards, method={"name": "mu-centering+orthograd"}, batch={"micro_batch_size": 2},
                    log={"log_interval": 1, "checkpoint_interval": 4, "spike_factor": 3.0})


def write_config(cfg, path: Path) -> Path:
    path.write_text(cfg.dumps())
    return path


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def assert_same_run(a: Path, b: Path) -> None:
    """Bit for bit: weights, optimizer state, the whole log and the final status (timing aside)."""
    ca, cb = load_checkpoint(a / "ckpt.pt"), load_checkpoint(b / "ckpt.pt")
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for i, state in ca["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, cb["optimizer"]["state"][i][k]), (i, k)
    assert [untimed(r) for r in read_log(a / "log.jsonl")] == [untimed(r) for r in read_log(b / "log.jsonl")]
    assert untimed(json.loads((a / "status.json").read_text())) == untimed(json.loads((b / "status.json").read_text()))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock's: its text only names the latest process to take it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "train.lock"}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    """The uninterrupted run every interrupted one must reproduce."""
    cfg = resumable_run(tmp_path_factory.mktemp("reference"), shards)
    assert train(cfg) == "finished"
    return cfg


# ----------------------------------------------------------------------------- kill and resume
def test_sigkill_at_a_random_step_then_the_same_command_resumes_bit_for_bit(tmp_path, shards, reference):
    cfg = resumable_run(tmp_path, shards)
    config = write_config(cfg, tmp_path / "run.toml")
    kill_after = random.randint(5, 9)  # log lines written: past the step-4 checkpoint, before the last step
    print(f"killed after {kill_after} log lines")  # shown if the test fails
    log = cfg.run_dir / "log.jsonl"
    command = [sys.executable, "-m", "nanoGPT.train", str(config)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while len(read_log(log)) < kill_after and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -9, f"the run ended before the kill: {proc.stderr.read()}"
    assert json.loads((cfg.run_dir / "status.json").read_text())["state"] == "running"
    assert f"pid {proc.pid}" in (cfg.run_dir / "train.lock").read_text()  # left behind, but its flock died with the process
    with open(log, "a") as f:
        f.write('{"step": 99, "lo')  # the worst a kill can leave: a line cut short

    r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stdout, r.stdout
    assert not list(cfg.run_dir.glob(".*.tmp"))
    assert_same_run(reference.run_dir, cfg.run_dir)


def test_same_config_and_seed_give_the_same_loss_curve(tmp_path, shards, reference):
    again = resumable_run(tmp_path, shards)
    assert train(again) == "finished"
    assert_same_run(reference.run_dir, again.run_dir)


def test_finished_run_is_not_trained_again(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 2})
    train(cfg)
    before = snapshot(cfg.run_dir)
    assert train(cfg) == "finished"
    assert snapshot(cfg.run_dir) == before


def test_a_log_damaged_mid_file_is_named_when_the_run_resumes(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(5)).replace('"step": 2', '"st#p": 2'))
    train_mod.truncate_log(log, before_step=4)
    assert f"warning: {log} is damaged at line 3 of 5" in capsys.readouterr().err
    assert [r["step"] for r in read_log(log)] == [0, 1]


# ----------------------------------------------------------------------------- checkpoints
def test_damaged_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, shards, capsys):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 8}, log={"log_interval": 1, "checkpoint_interval": 4})
    train(cfg)
    status = cfg.run_dir / "status.json"
    status.write_text(status.read_text().replace('"finished"', '"running"'))  # as if killed after the last save
    ckpt = cfg.run_dir / "ckpt.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    capsys.readouterr()
    assert train(cfg) == "finished"
    out = capsys.readouterr()
    assert "warning: checkpoint" in out.err and "damaged" in out.err
    assert f"resuming at step 4 from {cfg.run_dir / 'ckpt.prev.pt'}" in out.out  # not from scratch, not the damaged file
    assert [r["step"] for r in read_log(cfg.run_dir / "log.jsonl")] == list(range(8))


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 8}, log={"checkpoint_interval": 4})
    train(cfg)
    status = cfg.run_dir / "status.json"
    status.write_text(status.read_text().replace('"finished"', '"running"'))
    for name in ("ckpt.pt", "ckpt.prev.pt"):
        (cfg.run_dir / name).write_bytes(b"truncated")
    before = snapshot(cfg.run_dir)
    with pytest.raises(CheckpointError, match="no intact checkpoint.*delete the ckpt"):
        train(cfg)
    assert snapshot(cfg.run_dir) == before  # the run's 8 steps of log are not thrown away


@pytest.mark.parametrize("fail_at", range(5))
def test_a_crash_at_any_point_of_writing_a_checkpoint_leaves_an_intact_one(tmp_path, monkeypatch, fail_at):
    """save_checkpoint writes the new bytes to a temporary file, then renames four times: fail
    each step in turn (0: the disk fills up before any rename; 1-4: a kill before rename n)."""
    save_checkpoint(tmp_path / "ckpt.pt", {"step": 1}, previous=tmp_path / "ckpt.prev.pt")
    save_checkpoint(tmp_path / "ckpt.pt", {"step": 2}, previous=tmp_path / "ckpt.prev.pt")
    calls = {"n": 0}
    real_replace = os.replace

    def crash(*args):  # stands for a kill: nothing after it runs
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return real_replace(*args)

    def full_disk(path, chunks):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint_mod.os, "replace", crash)
    if fail_at == 0:
        monkeypatch.setattr(checkpoint_mod, "_write_temp", full_disk)
    with pytest.raises((KeyboardInterrupt, OSError)):
        save_checkpoint(tmp_path / "ckpt.pt", {"step": 3}, previous=tmp_path / "ckpt.prev.pt")
    monkeypatch.undo()
    path, ckpt = find_checkpoint(tmp_path)
    assert ckpt["step"] == 2  # step 3 becomes visible only with the last rename; until then step 2 stays whole
    save_checkpoint(tmp_path / "ckpt.pt", {"step": 4}, previous=tmp_path / "ckpt.prev.pt")  # the next save repairs
    assert find_checkpoint(tmp_path)[1]["step"] == 4
    assert load_checkpoint(tmp_path / "ckpt.prev.pt")["step"] == 2


def test_disk_full_while_checkpointing(tmp_path, shards, reference, monkeypatch, capsys):
    """The disk fills up during the second checkpoint: one clear line, exit 1, the first
    checkpoint intact, no temporary file left; once space is free the same command finishes
    the run exactly as if nothing had happened."""
    cfg = resumable_run(tmp_path, shards)
    config = write_config(cfg, tmp_path / "run.toml")
    quota = int(1.5 * (reference.run_dir / "ckpt.pt").stat().st_size)  # room for one checkpoint, not two
    written, real_write = [0], os.write

    def filling_disk(fd, data):
        room = quota - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, data[:room])  # a partial write, as on a disk that fills up
        written[0] += n
        return n

    monkeypatch.setattr(os, "write", filling_disk)
    assert train_mod.main([str(config)]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert f"disk full while writing {cfg.run_dir / 'ckpt.pt'}" in err
    assert not list(cfg.run_dir.glob(".*.tmp"))
    assert load_checkpoint(cfg.run_dir / "ckpt.pt")["step"] == 4
    assert json.loads((cfg.run_dir / "status.json").read_text()) == {"state": "running", "step": 4, "world_size": 1}

    monkeypatch.undo()  # space freed
    assert train_mod.main([str(config)]) == 0
    assert_same_run(reference.run_dir, cfg.run_dir)


# ----------------------------------------------------------------------------- divergence
def diverging_run(out_dir: Path, shards: dict[str, str], **log):
    """A learning rate of 1000 with no clipping: the loss is NaN by the fourth step."""
    return tiny_run(out_dir, shards, optim={"lr": 1e3, "grad_clip": 0.0}, schedule={"warmup_steps": 0, "min_lr": 0.0},
                    log={"log_interval": 1, "checkpoint_interval": 2, **log})


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, shards):
    cfg = diverging_run(tmp_path_factory.mktemp("diverged"), shards)
    assert train(cfg) == "diverged"
    return cfg


def test_nan_divergence_is_recorded_at_its_step_not_raised(diverged):
    status = json.loads((diverged.run_dir / "status.json").read_text())
    log = read_log(diverged.run_dir / "log.jsonl")
    at = status["diverged_at_step"]
    assert status["state"] == "diverged" and 0 < at < 11
    # Logged every step, so the log shows it: every step before `at` finite, `at` not, and the run stopped there.
    assert [r["step"] for r in log] == list(range(at + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in log[:at])
    assert not (math.isfinite(log[at]["loss"]) and math.isfinite(log[at]["grad_norm"]))
    assert status["last_finite_loss"] == log[at - 1]["loss"]
    ckpt = load_checkpoint(diverged.run_dir / "ckpt.pt")
    assert ckpt["step"] <= at and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert train(diverged) == "diverged"  # the same command again does nothing


def test_divergence_between_log_steps_is_pinned_to_its_step(tmp_path, shards, diverged):
    """Logging every 5 steps (no sync in between), the run finds the same step and loss, and
    stops at the first log step after it without writing a checkpoint."""
    sparse = diverging_run(tmp_path, shards, log_interval=5, checkpoint_interval=100)
    assert train(sparse) == "diverged"
    expected = json.loads((diverged.run_dir / "status.json").read_text())
    status = json.loads((sparse.run_dir / "status.json").read_text())
    assert (status["diverged_at_step"], status["last_finite_loss"]) == (expected["diverged_at_step"], expected["last_finite_loss"])
    stop = -(-expected["diverged_at_step"] // 5) * 5
    assert [r["step"] for r in read_log(sparse.run_dir / "log.jsonl")][-1] == stop == status["step"] - 1
    assert not (sparse.run_dir / "ckpt.pt").exists()


def test_loss_spike_beyond_the_factor_counts_as_divergence(tmp_path, shards):
    """lr 10 sends the loss from 10.8 to ~1900 in one step, finite: only the spike test stops it."""
    spiky = {"optim": {"lr": 10.0, "grad_clip": 0.0}, "schedule": {"max_steps": 3, "warmup_steps": 0, "min_lr": 0.0}}
    off = tiny_run(tmp_path / "off", shards, **spiky)
    assert train(off) == "finished"
    log = read_log(off.run_dir / "log.jsonl")
    assert all(math.isfinite(r["loss"]) for r in log) and log[1]["loss"] > 3 * log[0]["loss"]
    on = tiny_run(tmp_path / "on", shards, **spiky, log={"spike_factor": 3.0})
    assert train(on) == "diverged"
    status = json.loads((on.run_dir / "status.json").read_text())
    assert status["diverged_at_step"] == 1 and status["last_finite_loss"] == log[0]["loss"]


def test_aggregate_reports_divergence_and_the_lr_sensitivity_caps_it_at_the_initial_loss(tmp_path, diverged):
    out = tmp_path / "loss_overview.csv"
    assert aggregate.main([str(diverged.run_dir.parent), "--out", str(out)]) == 0
    (run,) = read_runs(out)
    (row,) = csv.DictReader(out.open())
    status = json.loads((diverged.run_dir / "status.json").read_text())
    assert row["status"] == "diverged" and row["diverged"] == "True"
    assert int(row["diverged_at_step"]) == status["diverged_at_step"]
    assert float(row["last_finite_loss"]) == status["last_finite_loss"]
    assert float(row["initial_loss"]) == pytest.approx(math.log(50304), abs=0.1)
    assert run.diverged and capped_loss(run, run.initial_loss) == run.initial_loss


def test_initial_loss_is_the_plain_cross_entropy_without_the_regulariser(tmp_path, shards):
    """ℓ₀ caps diverged runs at the loss of an untrained model; a z-loss run's step-0 "loss"
    also holds γ·mean(lse²) (about 1.2 here), which is not a loss of the model's predictions."""
    cfg = tiny_run(tmp_path, shards, method={"name": "z-loss", "gamma": 1e-2}, schedule={"max_steps": 2, "warmup_steps": 1})
    assert train_mod.train(cfg) == "finished"
    first = read_log(cfg.run_dir / "log.jsonl")[0]
    assert first["loss"] - first["ce"] > 1.0
    out = tmp_path / "loss_overview.csv"
    assert aggregate.main([str(cfg.run_dir.parent), "--out", str(out)]) == 0
    (row,) = csv.DictReader(out.open())
    assert float(row["initial_loss"]) == pytest.approx(first["ce"])


# ----------------------------------------------------------------------------- bad input
def llmc_shard(path: Path, tokens: np.ndarray) -> None:
    """An llm.c shard: its header does not say the tokenizer's vocab (word 3 is 0)."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


@pytest.mark.parametrize("overrides,names", [
    (["optim.learning_rate=1e-3"], "config key 'optim.learning_rate': unknown key"),
    (["schedule.max_steps=1.5"], "config key 'schedule.max_steps': must be an integer"),
    (["optim.lr=-1"], "config key 'optim.lr': must be a positive number"),
    (["method.name=adam-magic"], "config key 'method.name'"),
    (["model.scale=7B"], "config key 'model.scale': unknown scale '7B'"),
    (["method.name=stablemax+z-loss", "method.gamma=1e-4"], "cannot be combined"),
    (["log.spike_factor=0.5"], "config key 'log.spike_factor'"),
    (["batch.seq_len=100000"], "need at least"),  # longer than the data: no batch of it exists
    (["data.train=/no/such/dir/*.bin"], "/no/such/dir/*.bin: no shard files match"),
])
def test_bad_input_is_one_line_naming_the_cause_and_writes_nothing(tmp_path, shards, capsys, overrides, names):
    config = write_config(tiny_run(tmp_path / "out", shards), tmp_path / "run.toml")
    assert train_mod.main([str(config), *overrides]) == 2
    assert names in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_bad_shards_are_named_by_file(tmp_path, shards, capsys):
    tokens = np.fromfile(Path(shards["train"].replace("*", "000001")), dtype="<u2", offset=HEADER_INTS * 4)
    truncated, foreign, beyond = tmp_path / "truncated.bin", tmp_path / "foreign.bin", tmp_path / "beyond.bin"
    shutil.copy(shards["train"].replace("*", "000001"), truncated)
    os.truncate(truncated, truncated.stat().st_size - 100)
    write_shard(foreign, tokens, vocab_size=65536)  # a shard of a larger tokenizer says so in its header
    bad = tokens.copy()
    bad[200] = 60000  # an id the model's 50304-row embedding lacks, in the second micro-batch
    llmc_shard(beyond, bad)
    for shard, names in [(truncated, "truncated"), (foreign, "vocab size 65536, more than the model's 50304"),
                         (beyond, "token id 60000 >= vocab size 50304 at position 200")]:  # found at step 1, mid-run
        cfg = tiny_run(tmp_path / shard.stem, shards, data={"train": str(shard)}, batch={"micro_batch_size": 2})
        assert train_mod.main([str(write_config(cfg, tmp_path / "run.toml"))]) == 2
        err = one_error_line(capsys.readouterr().err)
        assert err.startswith(f"error: {shard}: ") and names in err, err


def test_bad_validation_input_is_named(tmp_path, shards, capsys):
    cfg = tiny_run(tmp_path, shards)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.toml").write_text(cfg.dumps())
    (cfg.run_dir / "status.json").write_text('{"state": "finished", "step": 12}')
    assert validate.main(["--prepare", str(cfg.run_dir)]) == 0
    spec = cfg.run_dir / "validation.toml"
    spec.write_text(spec.read_text().replace("seq_len = 32", "seq_len = 64"))
    assert validate.main([str(cfg.run_dir)]) == 1
    assert "'seq_len' 64 is above the model's context length 32" in one_error_line(capsys.readouterr().err)
    spec.write_text('checkpoint = "x"\nval = ')  # half written
    assert validate.main([str(cfg.run_dir)]) == 1
    assert f"{spec} is not valid UTF-8 TOML" in one_error_line(capsys.readouterr().err)
    assert validate.main(["--prepare", str(cfg.run_dir), "--val-tokens", "0"]) == 1
    assert "--val-tokens must be >= 1" in one_error_line(capsys.readouterr().err)
    assert validate.main(["--prepare", str(cfg.run_dir)]) == 0
    assert validate.main([str(cfg.run_dir)]) == 1  # never a fallback to an older checkpoint: its numbers would be wrong
    assert f"checkpoint {cfg.run_dir / 'ckpt.pt'} does not exist" in one_error_line(capsys.readouterr().err)
    assert not (cfg.run_dir / "validation.json").exists()


def test_a_run_directory_of_another_config_is_refused_and_left_as_it_was(tmp_path, shards, capsys):
    cfg = tiny_run(tmp_path, shards, schedule={"max_steps": 2}, name="shared")
    train(cfg)
    before = snapshot(cfg.run_dir)
    config = write_config(cfg, tmp_path / "run.toml")
    assert train_mod.main([str(config), "optim.lr=3e-3"]) == 2
    assert "holds a run with a different config (optim differ)" in one_error_line(capsys.readouterr().err)
    assert train_mod.main([str(config), "data.train=/no/such/*.bin"]) == 2
    capsys.readouterr()
    assert train_mod.main([str(config), "data.shard_seed=7"]) == 2  # another batch order
    assert "different config (data.shard_seed differ)" in one_error_line(capsys.readouterr().err)
    assert snapshot(cfg.run_dir) == before


def test_unwritable_output_folder_is_named(tmp_path, shards, capsys):
    if os.geteuid() == 0:  # root writes through any permission bits: a folder under a file is unwritable to all
        (tmp_path / "a_file").write_text("")
        out_dir = tmp_path / "a_file" / "runs"
    else:
        out_dir = tmp_path / "read_only"
        out_dir.mkdir(mode=0o500)
    config = write_config(tiny_run(out_dir, shards), tmp_path / "run.toml")
    assert train_mod.main([str(config)]) == 2
    assert f"cannot write into the run directory {out_dir}/" in one_error_line(capsys.readouterr().err)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_two_runs_in_one_directory_the_second_is_refused_naming_the_first(tmp_path, shards):
    cfg = tiny_run(tmp_path, shards)
    config = write_config(cfg, tmp_path / "run.toml")
    with hold_run_dir(cfg.run_dir):  # this test process is the first run
        r = subprocess.run([sys.executable, "-m", "nanoGPT.train", str(config)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 2
    err = one_error_line(r.stderr)
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in err
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["train.lock"]  # the second wrote nothing


def test_a_file_system_without_locks_warns_and_trains(tmp_path, monkeypatch, capsys):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoint_mod.fcntl, "flock", no_flock)
    with hold_run_dir(tmp_path / "run"):
        pass
    assert "warning: cannot lock" in capsys.readouterr().err


def test_a_bad_grid_file_stops_the_stage_with_its_message(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nscales = ["999M"]\n')
    r = subprocess.run(["bash", "scripts/0_run_training.sh", str(grid)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2
    assert "config key 'grid.scales': unknown scale '999M'" in r.stderr


def test_bad_override_on_the_command_line_exits_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nanoGPT.train", "optim.lr=-1", f"out_dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "config key 'optim.lr'" in one_error_line(r.stderr)


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_reports_every_run_whatever_state_its_files_are_in(tmp_path, shards, capsys):
    out = tmp_path / "out"
    configs = {}

    def run_dir(name: str, status: str | None = None, log: str | None = None, validation: str | None = None) -> Path:
        cfg = tiny_run(out, shards, name=name)
        configs[name] = write_config(cfg, tmp_path / f"{name}.toml")
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "config.toml").write_text(cfg.dumps())
        for file, text in (("status.json", status), ("log.jsonl", log), ("validation.json", validation)):
            if text is not None:
                (cfg.run_dir / file).write_text(text)
        return cfg.run_dir

    line = lambda step, loss=10.8: json.dumps({"step": step, "loss": loss, "tokens_per_s": 1000.0}) + "\n"
    finished = '{"state": "finished", "step": 2, "train_time": 1.0, "last_finite_loss": 9.0}'
    running = '{"state": "running", "step": 1}'
    run_dir("done", finished, line(0) + line(1, 9.0), '{"test_loss": 9.5, "test_perplexity": 13359.7}')
    run_dir("trained", finished, line(0) + line(1, 9.0))
    live = run_dir("running", running, line(0) + '{"step": 1, "lo')  # a kill (or a live writer) cuts a line short
    run_dir("interrupted", running, line(0))
    run_dir("not_started")
    run_dir("diverged", '{"state": "diverged", "step": 5, "diverged_at_step": 4, "last_finite_loss": 8.0}',
            line(0) + line(4, math.nan))
    run_dir("bad_status", '{"state": "runn')
    run_dir("bad_log", finished, line(0) + "garbage\n" + line(1, 9.0))
    run_dir("bad_validation", finished, line(0) + line(1, 9.0), '{"test_loss": 9.')
    bad_config = run_dir("bad_config")
    (bad_config / "config.toml").write_text("[optim\n")
    del configs["bad_config"]  # known only from its folder
    configs["missing"] = write_config(tiny_run(out, shards, name="missing"), tmp_path / "missing.toml")

    with hold_run_dir(live):
        assert aggregate.main([*map(str, configs.values()), str(out)]) == 0
    err = capsys.readouterr().err
    rows = {r["name"]: r for r in csv.DictReader((out / "loss_overview.csv").open())}
    status = {name: r["status"] for name, r in rows.items()}
    assert {k: v for k, v in status.items() if not v.startswith("corrupt")} == {
        "done": "done", "trained": "trained", "running": "running", "interrupted": "interrupted",
        "not_started": "not started", "diverged": "diverged", "missing": "missing"}
    assert status["bad_status"].startswith(f"corrupt: {out / 'bad_status' / 'status.json'} is damaged")
    assert status["bad_log"] == f"corrupt: {out / 'bad_log' / 'log.jsonl'} is damaged at line 2 of 3"
    assert status["bad_validation"].startswith(f"corrupt: {out / 'bad_validation' / 'validation.json'} is damaged")
    assert status["bad_config"].startswith(f"corrupt: config file {bad_config / 'config.toml'} is not valid UTF-8 TOML")
    assert all(f"warning: {name}: corrupt" in err for name in ("bad_status", "bad_log", "bad_validation", "bad_config"))
    assert rows["done"]["test_loss"] == "9.5" and rows["trained"]["test_loss"] == ""
    assert rows["diverged"]["last_finite_loss"] == "8.0" and rows["diverged"]["initial_loss"] == "10.8"
    assert rows["bad_log"]["lr"] == "0.01"  # a damaged run keeps what its config says about it
    header = (out / "loss_overview.csv").read_text().splitlines()[0].split(",")
    assert header == PUBLISHED_COLUMNS + ["last_finite_loss"]  # the existing columns, unchanged, then the new one
