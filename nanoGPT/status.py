"""Where the runs of a grid stand, one line per run and a count per state.

    python -m nanoGPT.status tiny_cpu                        # a grid by name (configs/grids/NAME.toml)
    python -m nanoGPT.status published --state interrupted,missing
    python -m nanoGPT.status output/published                # every run in an output folder

The states are those of loss_overview.csv, from the same code (aggregate.run_row): done
(validated), trained (finished, not yet validated), running (a live process holds the run's
lock), preempted (stopped with a checkpoint on SIGTERM/SIGUSR1), interrupted (died or was
killed: it failed, or its node did), diverged, not started, missing (no run directory yet), and
corrupt (a file of the run cannot be read). Preempted and interrupted runs resume from their
last checkpoint when submitted or trained again. The runs of the grid and every other run in
its output folder are listed, as in loss_overview.csv; a run submitted through scripts/slurm
that is not done or trained also shows its log file.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from .aggregate import collect, run_row
from .config import ConfigError, RunConfig, expand_grid, load_config, load_toml


def configs_named(arg: str) -> list[RunConfig]:
    """The runs an argument names: a grid name or file, or a run config file."""
    path = Path(arg)
    if not path.exists() and (Path("configs/grids") / f"{arg}.toml").is_file():
        path = Path("configs/grids") / f"{arg}.toml"
    if not path.is_file():
        raise ConfigError(f"'{arg}' is neither a grid in configs/grids/, a grid file, a run config nor an output folder")
    return expand_grid(path) if "grid" in load_toml(path) else [load_config(path)]


def runs(inputs: list[str]) -> list[tuple[dict, Path]]:
    """(aggregate row, run directory) of every run the inputs name, sorted by name."""
    configs = [c for x in inputs if not Path(x).is_dir() for c in configs_named(x)]
    folders = sorted({Path(x) for x in inputs if Path(x).is_dir()} | {Path(c.out_dir) for c in configs})
    listed: dict[str, tuple[dict, Path]] = {}
    for folder in (d for d in folders if d.is_dir()):
        listed.update((row["name"], (row, folder / row["name"])) for row in collect([], [folder]))
    for c in configs:  # the grid's runs without a run directory
        listed.setdefault(c.name, (run_row(c, c.run_dir), c.run_dir))
    return [listed[name] for name in sorted(listed)]


def line(row: dict, run_dir: Path) -> str:
    state = row["status"].split(":")[0]
    loss = row.get("test_loss") if state == "done" else row.get("last_train_loss")
    steps = f"{row.get('steps_done', '?')}/{row.get('steps', '?')}"
    text = f"{state:<12} {steps:>15} {'' if loss is None else f'{loss:.4f}':>8}  {row['name']}"
    log = run_dir.parent / "slurm" / f"{row['name']}.log"
    if state not in ("done", "trained") and log.exists():
        text += f"  (log: {log})"
    if state == "corrupt":
        text += f"\n{'':<12} {row['status']}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="grid names or files, run configs, output folders")
    p.add_argument("--state", type=lambda s: s.split(","), help="list only the runs in these states, e.g. interrupted,missing")
    args = p.parse_args(argv)
    try:
        listed = runs(args.inputs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'state':<12} {'steps':>15} {'loss':>8}  run")
    for row, run_dir in listed:
        if args.state is None or row["status"].split(":")[0] in args.state:
            print(line(row, run_dir))
    counts = Counter(row["status"].split(":")[0] for row, _ in listed)
    print(f"{len(listed)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
