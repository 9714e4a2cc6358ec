"""The results stage: numbers checked by hand on a synthetic loss_overview.csv, every figure and
table written, incomplete grids flagged, and the bash stage end to end on a tiny trained grid."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanoGPT import aggregate, results, validate
from nanoGPT.config import expand_grid, write_run_configs
from nanoGPT.train import train
from conftest import tiny_grid

ROOT = Path(__file__).resolve().parents[1]
STEPS, TOKENS = 1000, 1000 * 64 * 2048
NAN = math.nan

# (scale, method, lr, seed, status, test_loss, initial_loss, time). Designed holes:
# 16M mu-loss has a running, a missing and a trained (not validated) run; 29M has no mu-centering;
# 16M mu-centering and all of 29M logged no initial loss (the ℓ₀ fallbacks).
GRID = [
    ("16M", "baseline", 1e-3, 1, "done", 3.95, 10.9, 100.0),
    ("16M", "baseline", 3e-3, 1, "done", 3.87, 10.9, 100.0),
    ("16M", "baseline", 3e-3, 2, "done", 3.89, 10.9, 120.0),
    ("16M", "baseline", 1e-2, 1, "done", 4.10, 10.9, 100.0),
    ("16M", "baseline", 3e-2, 1, "diverged", NAN, 10.9, 20.0),
    ("16M", "z-loss", 1e-3, 1, "done", 3.96, 10.95, 106.0),
    ("16M", "z-loss", 3e-3, 1, "done", 3.89, 10.95, 108.0),
    ("16M", "z-loss", 1e-2, 1, "done", 3.90, 10.95, 104.0),
    ("16M", "z-loss", 3e-2, 1, "done", 3.97, 10.95, 110.0),
    ("16M", "mu-loss", 1e-3, 1, "done", 3.95, 10.9, 100.0),
    ("16M", "mu-loss", 3e-3, 1, "running", NAN, 10.9, 50.0),
    ("16M", "mu-loss", 1e-2, 1, "trained", NAN, 10.9, 100.0),
    ("16M", "mu-loss", 3e-2, 1, "missing", NAN, NAN, NAN),
    ("16M", "mu-centering", 1e-3, 1, "done", 3.97, NAN, 101.0),
    ("16M", "mu-centering", 3e-3, 1, "done", 3.90, NAN, 101.0),
    ("16M", "mu-centering", 1e-2, 1, "done", 3.85, NAN, 101.0),
    ("16M", "mu-centering", 3e-2, 1, "diverged", NAN, NAN, 30.0),
    ("29M", "baseline", 1e-3, 1, "done", 3.70, NAN, 200.0),
    ("29M", "baseline", 3e-3, 1, "done", 3.60, NAN, 200.0),
    ("29M", "baseline", 1e-2, 1, "diverged", NAN, NAN, 50.0),
    ("29M", "z-loss", 1e-3, 1, "done", 3.70, NAN, 210.0),
    ("29M", "z-loss", 3e-3, 1, "done", 3.61, NAN, 210.0),
    ("29M", "z-loss", 1e-2, 1, "done", 3.62, NAN, 210.0),
    ("29M", "mu-loss", 1e-3, 1, "done", 3.71, NAN, 201.0),
    ("29M", "mu-loss", 3e-3, 1, "done", 3.60, NAN, 201.0),
    ("29M", "mu-loss", 1e-2, 1, "done", 3.60, NAN, 201.0),
]


def run_name(scale, method, lr, seed):
    return f"wor-{scale}-{method}-lr{lr:g}-s{seed}"


def divergence_columns(method, lr, seed, status) -> dict:
    """validation.json's ‖μ‖ and mean logit, for validated runs: mu-centering at 0, the rest
    drifting with the lr (and the seed, so that averaging shows)."""
    if status != "done":
        return {}
    drift = 0.0 if method == "mu-centering" else 1000 * lr + seed - 1
    return {"mu_out_norm": drift, "logit_mean": -drift / 4}


def write_overview(path: Path, grid=GRID) -> Path:
    """A loss_overview.csv with the aggregation's columns plus one it does not write yet (tolerated)."""
    columns = aggregate.COLUMNS + ["a_future_column"]
    cell = lambda x: "" if isinstance(x, float) and math.isnan(x) else x
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for scale, method, lr, seed, status, loss, init, time in grid:
            w.writerow({"name": run_name(scale, method, lr, seed), "test_loss": cell(loss), "status": status,
                        "diverged": status == "diverged", "method": method, "scale": scale, "lr": lr,
                        "gamma": 1e-4 if method == "z-loss" else 0.0, "seed": seed, "steps": STEPS, "tokens": TOKENS,
                        "time": cell(time), "initial_loss": cell(init), "test_loss_kind": "softmax", "a_future_column": 5.0,
                        **divergence_columns(method, lr, seed, status)})
    return path


def write_logs(runs_dir: Path, grid=GRID) -> None:
    """log.jsonl with train.py's keys for every run that started; diverged runs end in NaN."""
    for scale, method, lr, seed, status, *_ in grid:
        if status == "missing":
            continue
        d = runs_dir / run_name(scale, method, lr, seed)
        d.mkdir(parents=True)
        lines = [{"step": s, "loss": 10 - s / 100, "ce": 10 - s / 100, "mu_out_norm": s / 500, "logit_mean": -s / 300}
                 for s in range(0, 1000, 100)]
        if status == "diverged":
            lines[-1].update(loss=NAN, ce=NAN)
        (d / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    csv_path = write_overview(root / "loss_overview.csv")
    write_logs(root)
    runs = results.read_runs(csv_path)
    series = {(s.scale, s.label): s for s in results.build_series(runs)}
    return csv_path, runs, series


@pytest.fixture(scope="module")
def report(synthetic):
    """The synthetic grid's results folder and REPORT.md text, built once (figures take seconds)."""
    csv_path = synthetic[0]
    out = csv_path.parent / "results"
    return out, results.write_report(csv_path, out, csv_path.parent, []).read_text()


# ----------------------------------------------------------------------------- numbers
def test_lrs_formula_by_hand():
    # ℓ = 4.0, 3.9, 4.3, NaN (diverged), ℓ₀ = 10.9: capped 4.0, 3.9, 4.3, 10.9; ℓ* = 3.9, K = 4
    # LRS = (0.1 + 0 + 0.4 + 7.0) / 3 = 2.5
    assert results.lr_sensitivity([4.0, 3.9, 4.3, NAN], 10.9) == pytest.approx(2.5)
    # a finite loss above ℓ₀ is capped too: (min(12, 10) − 3) / 1 = 7
    assert results.lr_sensitivity([3.0, 12.0], 10.0) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        results.lr_sensitivity([3.0], 10.0)


def test_lrs_of_series_with_seeds_and_divergence(synthetic):
    _, _, series = synthetic
    # 16M baseline: 3.95; mean of seeds (3.87 + 3.89)/2 = 3.88; 4.10; diverged -> ℓ₀ = 10.9; ℓ* = 3.88
    # LRS = ((3.95 − 3.88) + 0 + (4.10 − 3.88) + (10.9 − 3.88)) / 3 = 7.31 / 3
    assert results.series_lrs(series[("16M", "baseline")]) == pytest.approx(7.31 / 3)
    # 16M z-loss, nothing diverged: (0.07 + 0 + 0.01 + 0.08) / 3
    assert results.series_lrs(series[("16M", "z-loss")]) == pytest.approx(0.16 / 3)


def test_l0_fallbacks_for_runs_without_initial_loss(synthetic):
    _, _, series = synthetic
    # 16M mu-centering logged no initial loss: ℓ₀ is the largest of the scale (z-loss's 10.95)
    mc = series[("16M", "mu-centering")]
    assert mc.l0 == 10.95
    # capped 3.97, 3.90, 3.85, 10.95; ℓ* = 3.85: (0.12 + 0.05 + 0 + 7.10) / 3
    assert results.series_lrs(mc) == pytest.approx(7.27 / 3)
    # no run of 29M logged one: ln(50304), the loss of a uniform prediction
    base29 = series[("29M", "baseline")]
    assert base29.l0 == pytest.approx(10.82584)
    # capped 3.70, 3.60, ln 50304; ℓ* = 3.60, K = 3
    assert results.series_lrs(base29) == pytest.approx((0.10 + 0 + (math.log(50304) - 3.60)) / 2)


def test_best_loss_and_lr(synthetic):
    _, _, series = synthetic
    assert results.best(series[("16M", "baseline")]) == pytest.approx((3.88, 3e-3))
    assert results.best(series[("16M", "mu-centering")]) == pytest.approx((3.85, 1e-2))
    # a tie (3.60 at 3e-3 and 1e-2) goes to the smaller lr
    assert results.best(series[("29M", "mu-loss")]) == pytest.approx((3.60, 3e-3))


def test_relative_time_pairs_only_runs_trained_to_the_end(synthetic):
    _, _, series = synthetic
    base = series[("16M", "baseline")]
    # z-loss vs baseline: 106/100, 108/mean(100, 120), 104/100; at 3e-2 the baseline diverged (no pair)
    extra, pairs = results.relative_time(series[("16M", "z-loss")], base)
    assert pairs == 3 and extra == pytest.approx((106 / 100 + 108 / 110 + 104 / 100) / 3 - 1)
    # mu-loss: 1e-3 done and 1e-2 trained pair with the baseline; running and missing runs do not
    extra, pairs = results.relative_time(series[("16M", "mu-loss")], base)
    assert pairs == 2 and extra == pytest.approx(0.0)
    table = dict((row[0], row[1:]) for row in results.time_table(list(series.values()))[1])
    assert table["z-loss"][0] == f"{100 * ((106 / 100 + 108 / 110 + 104 / 100) / 3 - 1):+.1f}% (3/4 lrs)"
    assert table["z-loss"][1] == f"{100 * (210 / 200 - 1):+.1f}% (2/3 lrs)"


def test_incomplete_grid_gives_no_numbers(synthetic):
    _, _, series = synthetic
    all_series = list(series.values())
    mu = series[("16M", "mu-loss")]
    assert not mu.complete and mu.progress() == "1/4"
    assert results.series_lrs(mu) is None and results.best(mu) is None
    for table in (results.lrs_table(all_series), results.best_table(all_series)):
        header, rows = table
        assert header == ["method", "16M", "29M"]
        cells = {row[0]: row[1:] for row in rows}
        assert cells["mu-loss"][0] == "— (1/4 lrs)"
        assert cells["mu-centering"][1] == "no runs"
    holes = results.unfinished(all_series)
    assert ("29M", "mu-centering", "no runs at this scale") in holes
    assert [h for h in holes if h[1] == "mu-loss"] == [
        ("16M", "mu-loss", f"lr 0.003: {run_name('16M', 'mu-loss', 3e-3, 1)} is running"),
        ("16M", "mu-loss", f"lr 0.01: {run_name('16M', 'mu-loss', 1e-2, 1)} is trained"),
        ("16M", "mu-loss", f"lr 0.03: {run_name('16M', 'mu-loss', 3e-2, 1)} is missing")]


def test_an_lr_only_some_methods_ran_makes_the_others_incomplete(tmp_path):
    grid = [row for row in GRID if row[0] == "29M"] + [("29M", "baseline", 3e-2, 1, "done", 3.8, NAN, 200.0)]
    series = {s.label: s for s in results.build_series(results.read_runs(write_overview(tmp_path / "o.csv", grid)))}
    assert series["baseline"].complete and not series["z-loss"].complete
    assert ("29M", "z-loss", "lr 0.03: no run") in results.unfinished(list(series.values()))


# ----------------------------------------------------------------------------- files
FIGURES = ["loss_vs_lr", "lr_sensitivity", "relative_time", "curves_16M", "curves_29M"]
TABLES = ["completeness", "lr_sensitivity", "best", "relative_time", "vs_published", "vs_published_16M_lrs"]


def latex_rows_consistent(tex: str) -> None:
    lines = tex.strip().splitlines()
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lr]+)\}", lines[0]).group(1)
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule" and lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    for row in [lines[2]] + lines[4:-2]:
        assert row.endswith(r" \\") and len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
    text = re.sub(r"\\ensuremath\{[^}]*\}", "", tex)  # math mode may hold _ and ^
    assert not re.search(r"(?<!\\)[%#_&$^]", text.replace(" & ", " ")), "unescaped LaTeX special character"


def test_every_figure_and_table_is_written(report):
    out, text = report
    for stem in FIGURES:
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG", stem
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF", stem
        assert f"]({stem}.png)" in text and f"]({stem}.pdf)" in text
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(FIGURES)
    for stem in TABLES:
        md = (out / f"{stem}.md").read_text()
        assert md.strip() and md in text, stem
        latex_rows_consistent((out / f"{stem}.tex").read_text())
    # the missing run has no log, and the report says so rather than drawing nothing silently
    assert f"No log.jsonl for: `{run_name('16M', 'mu-loss', 3e-2, 1)}`" in text


def test_report_opens_with_the_incomplete_grid(report):
    banner = report[1].split("## ")[0]
    # 26 rows; not final: the running, missing and trained mu-loss runs
    assert "INCOMPLETE GRID" in banner and "23 of 26 runs have a final loss" in banner
    for name in (run_name("16M", "mu-loss", lr, 1) for lr in (3e-3, 1e-2, 3e-2)):
        assert name in banner
    assert "| 29M | mu-centering | no runs at this scale |" in banner


def test_complete_grid_says_so(tmp_path):
    grid = [row for row in GRID if row[0] == "29M" and row[1] != "mu-centering"]
    csv_path = write_overview(tmp_path / "loss_overview.csv", grid)
    text = results.write_report(csv_path, tmp_path / "r", tmp_path, []).read_text()
    assert "INCOMPLETE" not in text and "**The grid is complete**: all 9 runs have a final loss (1 diverged" in text


def test_ours_vs_published_and_the_horizon(synthetic, report):
    series, text = synthetic[2], report[1]
    assert "- 16M: 1,000 steps × 131,072 tokens = 131M tokens per run, 1% of the published 13.1B" in text
    header, rows = results.published_table(list(series.values()))
    by = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    assert by[("16M", "baseline")]["LRS (ours)"] == f"{7.31 / 3:.3f}" and by[("16M", "baseline")]["LRS (published)"] == "0.306"
    assert by[("16M", "mu-loss")]["best loss (ours)"] == "— (1/4 lrs)"
    assert by[("29M", "z-loss")]["extra time (published)"] == "—" and by[("16M", "z-loss")]["extra time (published)"] == "+6.4%"
    assert "At 16M our lr grid (0.001, 0.003, 0.01, 0.03) is not the published one" in text
    _, lr_rows = results.published_lrs_table(list(series.values()))
    lrs = {row[0]: row[1:] for row in lr_rows}
    assert lrs["0.03"] == ["diverged", "3.857", "diverged", "3.843"]
    assert lrs["0.003"] == ["3.880", "3.850", "3.900", "3.850"]
    assert lrs["0.0003"][0] == "no run"


def test_no_published_section_without_published_scales(tmp_path):
    grid = [("tiny", m, lr, 1, "done", 6.5, 10.8, 10.0) for m in ("baseline", "z-loss") for lr in (1e-3, 1e-2)]
    text = results.write_report(write_overview(tmp_path / "o.csv", grid), tmp_path / "r", tmp_path, []).read_text()
    assert "Ours vs published" not in text and not (tmp_path / "r" / "vs_published.md").exists()


# ----------------------------------------------------------------------------- CLI
def test_cli_curves_by_pattern(synthetic, tmp_path, capsys):
    csv_path, _, _ = synthetic
    out = tmp_path / "cli"
    assert results.main([str(csv_path.parent), "--out", str(out), "--curves", "*-z-loss-*"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'REPORT.md'}"
    assert (out / "curves_16M.png").exists() and (out / "curves_29M.png").exists()
    assert "Runs matching `*-z-loss-*`" in (out / "REPORT.md").read_text()


def test_cli_errors_are_one_line(synthetic, tmp_path, capsys):
    csv_path, _, _ = synthetic
    assert results.main([str(csv_path), "--out", str(tmp_path / "x"), "--curves", "no-such-run"]) == 2
    assert "error: --curves 'no-such-run' matches no run" in capsys.readouterr().err
    assert results.main([str(tmp_path / "nothing_here")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing_here'} does not exist\n"
    (tmp_path / "not_aggregated").mkdir()
    assert results.main([str(tmp_path / "not_aggregated")]) == 2
    assert "run the aggregation stage (scripts/3_aggregate.sh) first" in capsys.readouterr().err


def test_cli_no_time_leaves_the_wall_clock_comparison_out(synthetic, tmp_path):
    csv_path, _, _ = synthetic
    out = tmp_path / "no_time"
    assert results.main([str(csv_path), "--out", str(out), "--no-time", "two runs shared each GPU."]) == 0
    text = (out / "REPORT.md").read_text()
    section = text.split("## Relative wall-clock time")[1].split("## ")[0]
    assert section.strip() == "Not shown: two runs shared each GPU."
    assert not (out / "relative_time.png").exists() and not (out / "relative_time.md").exists()
    rows = [line for line in (out / "vs_published.md").read_text().splitlines() if line.startswith("| 16M |")]
    by_method = {row.split("|")[2].strip(): row.split("|")[7].strip() for row in rows}
    assert by_method["z-loss"] == "not comparable" and by_method["baseline"] == "—"
    # the same CSV without the flag has the numbers, so the check above can fail
    assert "+" in results.published_table(list(synthetic[2].values()))[1][1][6]


def test_csv_older_than_the_grid_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[grid]\nname = "g"\nmethods = ["baseline", "z-loss"]\nout_dir = "{tmp_path}"\n[gamma]\n"z-loss" = [1e-4]\n')
    configs = write_run_configs(grid, tmp_path / "configs")
    write_overview(tmp_path / "loss_overview.csv", [])  # aggregated before any run of this grid existed
    assert results.main([str(p) for p in configs]) == 2
    assert "lacks 2 run(s) of the grid" in capsys.readouterr().err


def test_default_curves_are_every_method_at_the_largest_lr(synthetic):
    _, runs, _ = synthetic
    picked = [(r.scale, r.method, r.lr) for r in results.default_curves(runs)]
    assert picked == [("16M", m, 3e-2) for m in ("baseline", "z-loss", "mu-loss", "mu-centering")] + \
                     [("29M", m, 1e-2) for m in ("baseline", "z-loss", "mu-loss")]


# ----------------------------------------------------------------------------- the stage, end to end
@pytest.mark.slow
def test_stage_script_on_a_tiny_trained_grid(tmp_path, shards):
    name = f"pytest_results_{os.getpid()}"
    grid = tiny_grid(tmp_path / "grid.toml", name, shards, ["baseline", "mu-centering"], [1e-2, 3e-2],
                     batch={"batch_size": 2}, schedule={"max_steps": 3, "warmup_steps": 1},
                     data={"val_tokens": 64, "val_batch_size": 2})
    *trained, never = expand_grid(grid)
    for cfg in trained:
        train(cfg)
        validate.prepare(cfg.run_dir)
        validate.evaluate(cfg.run_dir, "cpu")
    assert aggregate.main([str(p) for p in write_run_configs(grid, tmp_path / "configs")]) == 0
    try:
        r = subprocess.run(["bash", "scripts/4_results.sh", str(grid), "--curves", "*baseline*"], cwd=ROOT,
                           env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ROOT / "configs" / "runs" / name, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    report = tmp_path / "out" / "results" / "REPORT.md"
    assert r.stdout.strip().splitlines()[-1] == f"wrote {report}"
    text = report.read_text()
    assert "INCOMPLETE GRID" in text and f"{never.name} is missing" in text
    assert (report.parent / "curves_tiny.png").stat().st_size > 0
    assert "| baseline | 2/2" in text and "| mu-centering | 1/2" in text


def test_a_run_without_a_learning_rate_is_named_and_left_out(tmp_path, capsys):
    """A run folder whose config.toml was unreadable reaches the CSV with empty lr/scale/method."""
    path = write_overview(tmp_path / "loss_overview.csv")
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=aggregate.COLUMNS + ["a_future_column"]).writerow(
            {"name": "broken-run", "status": "corrupt: config.toml unreadable"})
    runs = results.read_runs(path)
    assert "broken-run" not in {r.name for r in runs} and len(runs) == len(GRID)
    assert "run broken-run (corrupt: config.toml unreadable) has no learning rate" in capsys.readouterr().err


def test_divergence_table_shows_the_drift_per_lr(synthetic, tmp_path):
    csv_path, runs, _ = synthetic
    series = results.build_series(runs)
    header, rows = results.divergence_table(series, "16M")
    assert header == ["method", "lr 0.001", "lr 0.003", "lr 0.01", "lr 0.03"]
    cells = {row[0]: row[1:] for row in rows}
    # baseline at 3e-3 averages seeds 1 and 2: ‖μ‖ (3 + 4) / 2 = 3.5, logit mean −0.875
    assert cells["baseline"] == ["1.00 / -0.25", "3.50 / -0.88", "10.00 / -2.50", "diverged"]
    assert cells["mu-centering"] == ["0.00 / +0.00", "0.00 / +0.00", "0.00 / +0.00", "diverged"]
    assert cells["mu-loss"] == ["1.00 / -0.25", "—", "—", "—"]  # running, trained-not-validated, missing
    report = results.write_report(csv_path, tmp_path / "out", csv_path.parent, [])
    text = report.read_text()
    assert "## Logit divergence at the end of training" in text and "| baseline | 1.00 / -0.25 | 3.50 / -0.88 |" in text
    assert (tmp_path / "out" / "divergence_29M.tex").exists()


def test_ranking_against_the_published_order(tmp_path):
    # 16M, three lrs; LRS by hand: baseline ((4.0-3.5) + (5.0-3.5)) / 2 = 1.0,
    # mu-centering ((3.7-3.6) + (3.8-3.6)) / 2 = 0.15, z-loss ((3.9-3.5) + (4.1-3.5)) / 2 = 0.5
    grid = [("16M", "baseline", lr, 1, "done", x, 10.8, 100.0) for lr, x in ((1e-3, 4.0), (1e-2, 3.5), (1e-1, 5.0))]
    grid += [("16M", "mu-centering", lr, 1, "done", x, 10.8, 100.0) for lr, x in ((1e-3, 3.7), (1e-2, 3.6), (1e-1, 3.8))]
    grid += [("16M", "z-loss", lr, 1, "done", x, 10.8, 100.0) for lr, x in ((1e-3, 3.9), (1e-2, 3.5), (1e-1, 4.1))]
    series = results.build_series(results.read_runs(write_overview(tmp_path / "o.csv", grid)))
    assert results.ranking_lines(series) == [
        "- 16M, least sensitive first: ours mu-centering 0.150, z-loss 0.500, baseline 1.000; "
        "published mu-centering 0.028, z-loss 0.054, baseline 0.306: the published order."]
    swapped = [(sc, {"baseline": "mu-centering", "mu-centering": "baseline"}.get(m, m), *rest) for sc, m, *rest in grid]
    series = results.build_series(results.read_runs(write_overview(tmp_path / "s.csv", swapped)))
    line, = results.ranking_lines(series)
    assert line.startswith("- 16M, least sensitive first: ours baseline 0.150, z-loss 0.500, mu-centering 1.000;")
    assert line.endswith(": **not** the published order.")
