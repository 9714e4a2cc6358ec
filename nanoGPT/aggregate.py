"""Aggregation: every run of a grid -> one row of loss_overview.csv.

    python -m nanoGPT.aggregate configs/runs/<grid>/*.toml [--out FILE]
    python -m nanoGPT.aggregate output/<grid>

Rows come from the given run configs, so a run that never started is listed as ``missing``
rather than silently absent, and from every run directory in the output folders. Every row
says its ``status``: done (validated), trained (not yet validated), running (a live process
holds its lock), interrupted (killed or stopped: the same training command resumes it),
preempted (stopped with a checkpoint on SIGTERM/SIGUSR1: the same command resumes it),
diverged, not started, missing, or ``corrupt: <file and what>`` for a run whose files cannot
be read; no run is dropped and no damaged file stops the stage. Other states a run writes
into its status.json are reported as they are. ``name,test_loss,test_perplexity``
come first so the published analysis tools read the file unchanged.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from .checkpoint import RunDirError, atomic_write, describe_os_error, read_json, read_log_checked, read_status, run_is_live
from .config import ConfigError, RunConfig, config_from_dict, load_toml
from .model import get_scale

COLUMNS = ["name", "test_loss", "test_perplexity", "test_loss_softmax", "test_loss_kind", "status", "diverged",
           "diverged_at_step", "method", "scale", "lr", "gamma", "seed", "steps", "steps_done", "tokens", "time",
           "tokens_per_s", "initial_loss", "last_train_loss", "mu_out_norm", "mu_in_norm", "emb_out_norm",
           "emb_in_norm", "logit_mean", "logit_std", "lse_sq_mean", "val_tokens", "last_finite_loss"]


def run_row(cfg: RunConfig, run_dir: Path) -> dict:
    row = {"name": cfg.name, "method": cfg.mitigation.name, "scale": get_scale(cfg.model.scale).name,
           "lr": cfg.optim.lr, "gamma": cfg.method.gamma, "seed": cfg.seed, "steps": cfg.schedule.max_steps,
           "tokens": cfg.tokens, "diverged": False}
    if not run_dir.is_dir():
        return {**row, "status": "missing", "steps_done": 0}
    try:
        return {**row, **progress(run_dir)}
    except RunDirError as e:  # a damaged or half-written file: say which, keep the row
        return {**row, "status": f"corrupt: {e}"}
    except OSError as e:  # a file that cannot be read at all, e.g. another user's
        return {**row, "status": f"corrupt: {describe_os_error(e)}"}


def progress(run_dir: Path) -> dict:
    """The columns a run directory's status.json, log.jsonl and validation.json give."""
    status = read_status(run_dir)
    state = status["state"]
    log = training_log(run_dir / "log.jsonl")
    row = {"status": state, "steps_done": status.get("step", 0), "time": status.get("train_time"),
           "diverged": state == "diverged", "diverged_at_step": status.get("diverged_at_step"),
           "last_finite_loss": status.get("last_finite_loss")}
    if log:
        # ℓ₀ of the sensitivity: the model's own cross-entropy at initialisation, without the
        # regulariser (z-loss's γ·lse² is part of "loss"); logs from before "ce" have only "loss"
        row["initial_loss"] = log[0].get("ce", log[0]["loss"]) if log[0]["step"] == 0 else None
        row["last_train_loss"] = log[-1]["loss"]
        speeds = sorted(r["tokens_per_s"] for r in log[1:] or log if isinstance(r.get("tokens_per_s"), (int, float)))
        row["tokens_per_s"] = speeds[len(speeds) // 2] if speeds else None  # median: the first log step includes compilation
    if state == "running" and run_is_live(run_dir) is False:
        row["status"] = "interrupted"
    if state == "finished":
        row["status"] = "trained"
        if (run_dir / "validation.json").exists():
            row.update(validation(run_dir / "validation.json"), status="done")
    return row


def training_log(path: Path) -> list[dict]:
    """log.jsonl's records; a damaged line before the last one would make numbers wrong."""
    records, damage = read_log_checked(path)
    if damage:
        raise RunDirError(damage)
    return records


def validation(path: Path) -> dict:
    try:
        result = read_json(path)
    except ValueError as e:  # invalid JSON or UTF-8
        raise RunDirError(f"{path} is damaged ({e}); run the validation stages again") from None
    if not (isinstance(result, dict) and isinstance(result.get("test_loss"), (int, float))):
        raise RunDirError(f"{path} is damaged (no test_loss); run the validation stages again")
    return {k: v for k, v in result.items() if k in COLUMNS}


def collect(config_paths: list[Path], output_dirs: list[Path]) -> list[dict]:
    runs: dict[str, tuple[RunConfig, Path]] = {}
    for path in config_paths:
        cfg = config_from_dict(load_toml(path))
        runs[cfg.name] = (cfg, cfg.run_dir)
    unreadable: dict[str, str] = {}  # run directory name -> why its config.toml cannot be read
    for cfg_path in (p for d in output_dirs for p in sorted(d.glob("*/config.toml"))):
        try:
            cfg = config_from_dict(load_toml(cfg_path))
        except ConfigError as e:
            unreadable[cfg_path.parent.name] = str(e)
            continue
        runs[cfg.name] = (cfg, cfg_path.parent)
    rows = [run_row(cfg, run_dir) for cfg, run_dir in runs.values()]
    for name, why in unreadable.items():
        if name in runs:  # its run config (from the grid) still describes the run
            print(f"warning: {name}: {why}", file=sys.stderr)
        else:
            rows.append({"name": name, "status": f"corrupt: {why}"})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["name"]):
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    atomic_write(path, buf.getvalue().encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="run config files and/or output folders of runs")
    p.add_argument("--out", type=Path, help="default: loss_overview.csv in the runs' output folder")
    args = p.parse_args(argv)
    config_paths = [x for x in args.inputs if x.is_file()]
    output_dirs = [x for x in args.inputs if x.is_dir()]
    for x in args.inputs:
        if not x.exists():
            print(f"error: {x} does not exist", file=sys.stderr)
            return 2
    try:
        output_dirs += sorted({Path(config_from_dict(load_toml(x)).out_dir) for x in config_paths} - set(output_dirs))
        rows = collect(config_paths, [d for d in output_dirs if d.is_dir()])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out is None and len(output_dirs) != 1:
        print(f"error: runs from several output folders ({', '.join(map(str, output_dirs))}): say where with --out", file=sys.stderr)
        return 2
    out = args.out or output_dirs[0] / "loss_overview.csv"
    try:
        write_csv(rows, out)
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for r in rows:
        kind, _, why = r["status"].partition(":")  # corrupt: <file and what>
        if why:
            print(f"warning: {r['name']}: {r['status']}", file=sys.stderr)
        counts[kind] = counts.get(kind, 0) + 1
    print(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
