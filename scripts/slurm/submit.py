"""Submit runs to slurm: one job array per resource shape, one run per array task, then the
validation and aggregation stages as jobs that wait for the training (--dependency=afterok).

    scripts/slurm/submit.sh GRID|CONFIG|FOLDER... [options] [-- sbatch options for every job]
    scripts/slurm/submit.sh published --dry-run
    scripts/slurm/submit.sh published --scale 16M,29M --lr 1e-3 -- --partition=gpu --time=24:00:00

The GPUs of a run come from the scale table (see ``gpus_per_run``; --gpus overrides), and a run
that needs more GPUs than a node has spans nodes. Runs already finished or diverged are not
trained again but are validated and aggregated with the others. Logs, in ``<out_dir>/slurm/``:
``<run name>.log`` per run (every attempt appended), slurm's own messages in
``slurm-<job>_<task>.out``, and the run list each submission's jobs read.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from nanoGPT.checkpoint import RunDirError, read_status  # noqa: E402
from nanoGPT.config import ConfigError, RunConfig, config_from_dict, load_toml  # noqa: E402
from nanoGPT.model import get_scale  # noqa: E402

TRAIN, STAGES = ROOT / "scripts/slurm/train.sbatch", ROOT / "scripts/slurm/stages.sbatch"


class SubmitError(Exception):
    pass


def gpus_per_run(cfg: RunConfig) -> int:
    """The fewest GPUs that take the global batch in one micro-batch each; 0 for a CPU run.

    The scale table's maximum micro-batch is what fills one GPU's memory: on fewer GPUs a run
    only accumulates gradients (the same work per GPU, a longer wall-clock), on more each GPU
    runs a smaller micro-batch at a lower utilisation. The published grid (batch 64): 16M and
    29M on 1 GPU, 57M and 109M on 2, 221M on 4."""
    if cfg.system.device == "cpu":
        return 0
    B = cfg.batch.batch_size
    most = cfg.batch.micro_batch_size or get_scale(cfg.model.scale).max_micro_batch
    return next(g for g in range(1, B + 1) if B % g == 0 and B // g <= most)


def node_shape(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, GPUs per node) of a run: as few nodes as hold its GPUs, the same number on each."""
    nodes = max(1, math.ceil(gpus / gpus_per_node))
    if gpus % nodes:
        raise SubmitError(f"{gpus} GPUs do not split evenly over {nodes} nodes of {gpus_per_node} GPUs: choose --gpus")
    return nodes, gpus // nodes


def array_spec(indices: list[int]) -> str:
    """Task indices in slurm's --array syntax: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    spans = []
    for _, run in itertools.groupby(enumerate(indices), lambda p: p[1] - p[0]):
        first, *rest = [i for _, i in run]
        spans.append(f"{first}-{rest[-1]}" if rest else str(first))
    return ",".join(spans)


def select(configs: list[RunConfig], scales: list[str], methods: list[str], lrs: list[float]) -> list[RunConfig]:
    """The runs matching every filter given (a filter lists alternatives); a filter value that
    matches no run is an error, not an empty submission."""
    try:
        scales = [get_scale(s).name for s in scales]
    except KeyError as e:
        raise SubmitError(f"--scale: {e.args[0]}") from None
    tests = {"--scale": (scales, lambda c, s: get_scale(c.model.scale).name == s),
             "--method": (methods, lambda c, m: c.method.name == m),
             "--lr": (lrs, lambda c, lr: math.isclose(c.optim.lr, lr, rel_tol=1e-9))}
    for flag, (values, match) in tests.items():
        for v in values:
            if not any(match(c, v) for c in configs):
                raise SubmitError(f"{flag} {v}: no run has it")
    return [c for c in configs if all(not values or any(match(c, v) for v in values) for values, match in tests.values())]


def sbatch(cmd: list[str], dry_run: bool, placeholder: str) -> str:
    """Submit (or, dry, print) one sbatch command; returns the job id."""
    print(shlex.join(cmd))
    if dry_run:
        return placeholder
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SubmitError(f"sbatch failed ({r.returncode}): {r.stderr.strip()}")
    job = r.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    print(f"-> job {job}")
    return job


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    words = lambda s: s.split(",")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", type=Path, help="run config files (scripts/slurm/submit.sh expands grid names)")
    p.add_argument("--scale", type=words, action="extend", default=[], help="only these scales, e.g. 16M,29M")
    p.add_argument("--method", type=words, action="extend", default=[], help="only these methods, e.g. baseline,z-loss")
    p.add_argument("--lr", type=lambda s: [float(x) for x in s.split(",")], action="extend", default=[], help="only these learning rates")
    p.add_argument("--gpus", type=int, help="GPUs per run for every run (0: CPU); default: from the scale table")
    p.add_argument("--gpus-per-node", type=int, default=4, help="GPUs of one node (default 4)")
    p.add_argument("--cpus-per-gpu", type=int, default=4, help="CPU cores per GPU (default 4)")
    p.add_argument("--grace", type=int, default=300,
                   help="seconds before the time limit at which a run checkpoints and requeues itself (default 300)")
    p.add_argument("--max-running", type=int, help="at most this many runs of an array at once")
    p.add_argument("--after", choices=["ok", "any"], default="ok",
                   help="validate after every run succeeded (ok, default) or after they all ended (any)")
    p.add_argument("--train-only", action="store_true", help="do not submit the validation and aggregation jobs")
    p.add_argument("--log-dir", type=Path, help="default: <out_dir>/slurm")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the sbatch commands, submit nothing")
    args = p.parse_args(argv)
    try:
        return submit(args, extra)
    except (SubmitError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def submit(args: argparse.Namespace, extra: list[str]) -> int:
    configs = [config_from_dict(load_toml(path)) for path in args.configs]
    paths = {c.name: path.resolve() for c, path in zip(configs, args.configs)}
    if len(paths) < len(configs):
        raise SubmitError("two run configs name the same run (and so the same run directory)")
    runs = select(configs, args.scale, args.method, args.lr)
    gpus = {c.name: gpus_per_run(c) if args.gpus is None else args.gpus for c in runs}
    out_dirs = sorted({(ROOT / c.out_dir).resolve() for c in runs})
    if len(out_dirs) > 1 and args.log_dir is None:
        raise SubmitError(f"runs from several output folders ({', '.join(map(str, out_dirs))}): say where the logs go with --log-dir")
    log_dir = (args.log_dir or out_dirs[0] / "slurm").resolve()
    grid = out_dirs[0].name

    # The run list: every selected run (the later stages take them all); the array tasks are
    # the lines of the runs that still have training to do.
    shapes: dict[tuple[int, int], list[int]] = {}
    done = 0
    for i, c in enumerate(runs):
        try:
            if read_status(ROOT / c.run_dir)["state"] in ("finished", "diverged"):
                done += 1
                continue
        except RunDirError as e:  # training would stop at once on it; say so now
            print(f"warning: {c.name} not submitted: {e}", file=sys.stderr)
            continue
        shape = node_shape(gpus[c.name], args.gpus_per_node) if gpus[c.name] else (1, 0)
        shapes.setdefault(shape, []).append(i)
    run_list = log_dir / f"runs-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}.tsv"
    lines = "".join(f"{paths[c.name]}\t{c.name}\t{(ROOT / c.run_dir).resolve()}\n" for c in runs)

    print(f"{len(runs)} runs selected, {done} of them already finished or diverged; run list {run_list}")
    if args.dry_run:
        print("dry run: nothing is written or submitted")
        print(f"{'task':>6} {'nodes':>6} {'GPUs':>6}  run")
        for (nodes, per_node), indices in sorted(shapes.items()):
            for i in indices:
                print(f"{i:>6} {nodes:>6} {nodes * per_node:>6}  {runs[i].name}")
    elif shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: submit from a slurm login node, or use --dry-run")
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        run_list.write_text(lines)

    common = ["sbatch", "--parsable", f"--chdir={ROOT}"]
    train_jobs = []
    for n, ((nodes, per_node), indices) in enumerate(sorted(shapes.items()), 1):
        array = array_spec(indices) + (f"%{args.max_running}" if args.max_running else "")
        gpu_opts = [f"--gpus-per-node={per_node}", f"--cpus-per-task={per_node * args.cpus_per_gpu}"] if per_node else []
        cmd = [*common, f"--job-name=train-{grid}", f"--array={array}", f"--output={log_dir}/slurm-%A_%a.out",
               f"--nodes={nodes}", "--ntasks-per-node=1", *gpu_opts, f"--signal=B:USR1@{args.grace}",
               *extra, str(TRAIN), str(run_list)]
        train_jobs.append(sbatch(cmd, args.dry_run, f"<train-{n}>"))
    if not args.train_only:
        after = lambda jobs: [f"--dependency=after{args.after}:{':'.join(jobs)}"] if jobs else []
        gpu_opts = ["--gpus-per-node=1", f"--cpus-per-task={args.cpus_per_gpu}"] if any(gpus.values()) else []
        validate = sbatch([*common, f"--job-name=validate-{grid}", f"--output={log_dir}/validate-%j.out", "--nodes=1",
                           "--ntasks=1", *gpu_opts, *after(train_jobs), *extra, str(STAGES), str(run_list),
                           "1_prepare_validation.sh", "2_run_validation.sh"], args.dry_run, "<validate>")
        sbatch([*common, f"--job-name=aggregate-{grid}", f"--output={log_dir}/aggregate-%j.out", "--nodes=1", "--ntasks=1",
                *after([validate]), *extra, str(STAGES), str(run_list), "3_aggregate.sh"], args.dry_run, "<aggregate>")
    if not args.dry_run:
        print(f"submitted; logs in {log_dir}; progress: scripts/status.sh {out_dirs[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
