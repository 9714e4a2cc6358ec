"""Two runs of one setting side by side: loss curves, their largest gap, and tokens/s.

    python results/ddp_16M/compare_runs.py RUN_A RUN_B [--noise RUN_C] [--skip 50] \
        [--labels A B] --out PREFIX

RUN_* are run directories (with log.jsonl). --noise names a repeat of RUN_A: |A − C| is how far
two runs of the same setting drift apart on this hardware, the yardstick for |A − B|. Tokens/s
is the median over log steps after --skip (the first ones include compilation). Writes
PREFIX.md (the summary), PREFIX.csv (the losses per logged step) and PREFIX.png (curves and gaps).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from nanoGPT.aggregate import training_log  # noqa: E402


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in training_log(run_dir / "log.jsonl")}


def median_tokens_per_s(run_dir: Path, skip: int) -> float:
    speeds = [r["tokens_per_s"] for r in training_log(run_dir / "log.jsonl") if r["step"] > skip]
    if not speeds:
        raise SystemExit(f"error: {run_dir} has no log step after step {skip}")
    return statistics.median(speeds)


def gaps(a: dict[int, float], b: dict[int, float], skip: int) -> dict[str, float]:
    steps = [s for s in sorted(a.keys() & b.keys()) if s > skip]
    if not steps:
        raise SystemExit(f"error: the runs share no log step after step {skip}")
    d = [abs(a[s] - b[s]) for s in steps]
    return {"max": max(d), "mean": statistics.fmean(d), "last": d[-1], "last_step": steps[-1]}


def compare(run_a: Path, run_b: Path, noise: Path | None, skip: int, labels: tuple[str, str]) -> tuple[str, list[list]]:
    la, lb = losses(run_a), losses(run_b)
    lc = losses(noise) if noise else {}
    ta, tb = median_tokens_per_s(run_a, skip), median_tokens_per_s(run_b, skip)
    g = gaps(la, lb, skip)
    rows = [["", labels[0], labels[1]],
            ["median tokens/s", f"{ta:,.0f}", f"{tb:,.0f}"],
            [f"speed-up over {labels[0]}", "1", f"{tb / ta:.3f}"],
            [f"loss at step {g['last_step']}", f"{la[g['last_step']]:.4f}", f"{lb[g['last_step']]:.4f}"]]
    md = ["| " + " | ".join(r) + " |" for r in rows]
    md.insert(1, "|---|---|---|")
    md += ["", f"|loss({labels[0]}) − loss({labels[1]})| over log steps after {skip}: "
           f"max {g['max']:.4f}, mean {g['mean']:.4f}, at the last step {g['last']:.4f}."]
    if noise:
        n = gaps(la, lc, skip)
        md.append(f"Noise floor, |loss({labels[0]}) − loss(its repeat)|: max {n['max']:.4f}, mean {n['mean']:.4f}, "
                  f"at the last step {n['last']:.4f}.")
    table = [["step", labels[0], labels[1], *(["repeat"] if noise else [])]]
    for s in sorted(la.keys() & lb.keys()):
        table.append([s, la[s], lb[s], *([lc.get(s, "")] if noise else [])])
    return "\n".join(md) + "\n", table


def plot(table: list[list], skip: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    head, rows = table[0], table[1:]
    steps = [r[0] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for i, label in enumerate(head[1:], start=1):
        top.plot(steps, [r[i] if r[i] != "" else float("nan") for r in rows], label=label, lw=1)
    top.set_ylabel("training loss")
    top.legend()
    for i, label in enumerate(head[2:], start=2):
        bottom.plot(steps, [abs(r[1] - r[i]) if r[i] != "" else float("nan") for r in rows],
                    label=f"|{head[1]} − {label}|", lw=1, color=f"C{i - 1}")  # the colour of `label` above
    bottom.axvline(skip, color="grey", lw=0.5, ls="--")
    bottom.set_ylabel("loss gap")
    bottom.set_xlabel("step")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--noise", type=Path)
    p.add_argument("--skip", type=int, default=50)
    p.add_argument("--labels", nargs=2, default=("A", "B"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    md, table = compare(args.run_a, args.run_b, args.noise, args.skip, tuple(args.labels))
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        csv.writer(f).writerows(table)
    plot(table, args.skip, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
