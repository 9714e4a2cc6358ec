"""scripts/slurm: the submission plan (no slurm needed), then a real slurm on this machine.

The real-slurm test installs Debian's slurm-wlm and munge with apt-get when sbatch is absent
(it needs root for that, as in CI; otherwise it fails and says so), starts munged, slurmctld
and slurmd on localhost with a one-node CPU config written here, submits a tiny grid through
scripts/slurm/submit.sh and the real sbatch, preempts two of its array tasks (one with the
time-limit warning SIGUSR1, one with `scontrol requeue`, which is how slurm preempts with
PreemptMode=REQUEUE), and checks that both resumed from the checkpoint written when the
signal came, that every run trained and was validated, and loss_overview.csv.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanoGPT.config import expand_grid, write_run_configs
from conftest import tiny_grid

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "scripts" / "slurm" / "submit.sh"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # slurmctld, slurmd, munged live in sbin


def load_submit():
    spec = importlib.util.spec_from_file_location("slurm_submit", ROOT / "scripts" / "slurm" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the plan
def test_gpus_per_run_follow_the_scale_table():
    submit = load_submit()
    gpus = {c.model.scale: submit.gpus_per_run(c) for c in expand_grid(ROOT / "configs/grids/published.toml")}
    assert gpus == {"16M": 1, "29M": 1, "57M": 2, "109M": 2, "221M": 4}
    assert {submit.node_shape(g, 4) for g in gpus.values()} == {(1, 1), (1, 2), (1, 4)}
    assert submit.node_shape(8, 4) == (2, 4)
    assert submit.node_shape(6, 4) == (2, 3)
    with pytest.raises(submit.SubmitError, match="split evenly"):
        submit.node_shape(5, 4)
    assert submit.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert submit.array_spec([3]) == "3"


def dry_run(tmp_path: Path, grid: str, *options: str) -> subprocess.CompletedProcess:
    """submit.sh GRID --dry-run OPTIONS, with an sbatch on PATH that fails the test if it is ever called."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-was-called\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(SUBMIT), grid, "--dry-run", *options], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert not (tmp_path / "sbatch-was-called").exists()
    return r


def test_dry_run_of_the_published_grid(tmp_path):
    r = dry_run(tmp_path, "published", "--", "--partition=gpu", "--time=48:00:00")
    assert r.returncode == 0, r.stderr
    commands = [line for line in r.stdout.splitlines() if line.startswith("sbatch ")]
    train = [c for c in commands if "train.sbatch" in c]
    # one array per resource shape: 16M+29M on 1 node x 1 GPU, 57M+109M on 1 x 2, 221M on 1 x 4
    assert [re.search(r"--array=(\S+)", c)[1] for c in train] == ["0-55", "56-111", "112-139"]
    assert [re.search(r"--nodes=(\d+) .*--gpus-per-node=(\d+)", c).groups() for c in train] == [("1", "1"), ("1", "2"), ("1", "4")]
    assert all("--signal=B:USR1@300" in c and c.index("--partition=gpu") < c.index("train.sbatch") for c in train)
    validate, aggregate = commands[3:]
    assert "--dependency=afterok:<train-1>:<train-2>:<train-3>'" in validate and "1_prepare_validation.sh 2_run_validation.sh" in validate
    assert "--dependency=afterok:<validate>'" in aggregate and aggregate.endswith("3_aggregate.sh")
    assert "140 runs selected" in r.stdout
    run_list = Path(re.search(r"run list (\S+)", r.stdout)[1])
    assert not run_list.exists()  # a dry run writes nothing


def test_dry_run_filters(tmp_path):
    r = dry_run(tmp_path, "published", "--scale", "221M,4", "--method", "baseline", "--lr", "1e-2")
    assert r.returncode == 0, r.stderr
    runs = re.findall(r"^\s+\d+\s+(\d+)\s+(\d+)\s+(\S+)$", r.stdout, re.M)
    assert runs == [("1", "1", "wor40A-16M-13p1B-100k-bs64-lr100-baseline-g0e+00-s1"),
                    ("1", "4", "worC0A-221M-13p1B-100k-bs64-lr100-baseline-g0e+00-s1")]
    r = dry_run(tmp_path, "published", "--method", "z_loss")
    assert r.returncode == 2 and "--method z_loss: no run has it" in r.stderr


def test_dry_run_leaves_out_finished_and_damaged_runs(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    out = tmp_path / "out"
    grid.write_text(f'[grid]\nname = "g"\nscales = ["tiny"]\nlearning_rates = [1e-3, 2e-3, 3e-3]\nout_dir = "{out}"\n')
    paths = write_run_configs(grid, tmp_path / "runs")
    finished, pending, damaged = expand_grid(grid)
    for cfg, status in ((finished, '{"state": "finished", "step": 1}'), (damaged, '{"state": "runn')):
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "status.json").write_text(status)
    assert load_submit().main([*map(str, paths), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "3 runs selected, 1 of them already finished or diverged" in out
    assert re.findall(r"^\s+(\d+)\s+1\s+1\s+(\S+)$", out, re.M) == [("1", pending.name)]
    assert f"warning: {damaged.name} not submitted:" in err and "status.json" in err
    assert "--array=1 " in out  # and the later stages still take all three (the run list)


# ----------------------------------------------------------------------------- a real slurm
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_slurm_installed() -> None:
    missing = [c for c in ("sbatch", "slurmctld", "slurmd", "munged") if shutil.which(c, path=SBIN) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"the real-slurm test needs {', '.join(missing)}: run it as root (it installs slurm-wlm and munge "
                    "with apt-get) or install them")
    r = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
                       shell=True, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"apt-get install slurm-wlm munge failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


SLURM_CONF = """\
ClusterName=pytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={dir}/munge.sock,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm(tmp_path_factory):
    """munged, slurmctld and slurmd of a one-node cluster, in the foreground as our children;
    yields the environment that points sbatch & co. at it."""
    ensure_slurm_installed()
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=d, ctld_port=free_port(), d_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SBIN, "PYTHON": sys.executable}
    daemons = []
    try:
        for cmd in (["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={d}/munge.sock",
                     f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
                    ["slurmctld", "-D", "-c", "-i"], ["slurmd", "-D", "-c"]):
            daemons.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(d / f"{cmd[0]}.err", "w")))
            time.sleep(1)
        deadline = time.time() + 60
        while subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip() != "idle":
            assert time.time() < deadline, "the slurm node never became idle:\n" + logs_of(d)
            assert all(p.poll() is None for p in daemons), "a slurm daemon exited:\n" + logs_of(d)
            time.sleep(1)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
        for p in reversed(daemons):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def logs_of(*folders: Path) -> str:
    files = sorted(f for d in folders for f in d.rglob("*") if f.suffix in (".log", ".out", ".err") and f.is_file())
    return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-3000:]}" for f in files)


def squeue(env) -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "log.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slurm
def test_grid_through_a_real_slurm_with_preemption(slurm, tmp_path, shards):
    env = slurm
    out = tmp_path / "out"
    grid_name = f"pytest_slurm_{os.getpid()}"
    grid = tiny_grid(tmp_path / "grid.toml", grid_name, shards, ["baseline", "z-loss", "stablemax"], [1e-2],
                     schedule={"max_steps": 60, "warmup_steps": 2},
                     log={"checkpoint_interval": 1000},  # only the last step and a preemption checkpoint
                     data={"val_tokens": 256})
    runs = {c.name: c for c in expand_grid(grid)}
    try:
        r = subprocess.run(["bash", str(SUBMIT), str(grid)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "--array=0-2" in r.stdout and "--gpus-per-node" not in r.stdout  # a CPU grid: no GPUs asked for
        run_list = next((out / "slurm").glob("runs-*.tsv"))
        names = [line.split("\t")[1] for line in run_list.read_text().splitlines()]
        assert sorted(names) == sorted(runs)
        job = re.search(r"--array=0-2 .*\n-> job (\d+)", r.stdout)[1]

        # Preempt tasks 0 and 1 once they have trained a few steps: 0 with the time-limit
        # warning (the task requeues itself), 1 the way slurm preempts (TERM, then requeue).
        victims = {0: ["scancel", "--batch", "--signal=USR1", f"{job}_0"], 1: ["scontrol", "requeue", f"{job}_1"]}
        deadline = time.time() + 120
        while victims:
            assert time.time() < deadline, "the runs never got going:\n" + logs_of(out)
            for task, cmd in list(victims.items()):
                if steps_logged(runs[names[task]].run_dir) >= 2:
                    subprocess.run(cmd, env=env, check=True)
                    del victims[task]
            time.sleep(0.2)

        deadline = time.time() + 240
        while squeue(env):
            assert time.time() < deadline, f"jobs still queued: {squeue(env)}\n" + logs_of(out)
            time.sleep(2)

        with open(out / "loss_overview.csv") as f:
            rows = {row["name"]: row for row in csv.DictReader(f)}
        assert set(rows) == set(runs), logs_of(out)
        for name, row in rows.items():
            run_dir = runs[name].run_dir
            assert row["status"] == "done", f"{name}: {row['status']}\n" + logs_of(out)
            assert float(row["test_loss"]) > 0 and int(row["val_tokens"]) == 256
            assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
            steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
            assert steps == list(range(60)), f"{name}: every step logged once"

        for task in (0, 1):
            name = names[task]
            log = (out / "slurm" / f"{name}.log").read_text()
            attempts = re.split(r"^=== .* restart \d+\) on ", log, flags=re.M)[1:]
            assert len(attempts) == 2 and "restart 1)" in log, f"{name}: one requeue expected:\n{log}"
            if task == 0:
                assert "requeued: the run resumes from its checkpoint" in attempts[0], log
            first, second = ([int(s) for s in re.findall(r"^step\s+(\d+) \|", a, re.M)] for a in attempts)
            resumed_at = int(re.search(r"resuming at step (\d+)", attempts[1])[1])
            # The checkpoint was written when the signal came (checkpoint_interval is far
            # beyond max_steps), and the second attempt redid no step before it.
            assert 2 <= resumed_at < 60 and resumed_at == first[-1] + 1, log
            assert second == list(range(resumed_at, 60)), log
        for name in names[2:]:
            assert "restart 1)" not in (out / "slurm" / f"{name}.log").read_text()
        r = subprocess.run(["bash", "scripts/status.sh", str(grid)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.splitlines()[-1] == "3 runs: 3 done", r.stdout + r.stderr
    finally:
        shutil.rmtree(ROOT / "configs" / "runs" / grid_name, ignore_errors=True)
