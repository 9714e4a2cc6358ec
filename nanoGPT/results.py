"""Results: loss_overview.csv -> figures, tables and a report a researcher reads.

    python -m nanoGPT.results output/<grid>/loss_overview.csv [--out DIR] [--runs-dir DIR] [--curves PATTERN ...]
                                                            [--no-time REASON]
    python -m nanoGPT.results output/<grid>                     # the folder holding loss_overview.csv
    python -m nanoGPT.results configs/runs/<grid>/*.toml        # the loss_overview.csv of the runs' out_dir

Writes into DIR (default: ``results/`` next to the CSV) the figures (PNG and PDF) ``loss_vs_lr``,
``lr_sensitivity``, ``relative_time`` and ``curves_<scale>``, the tables (Markdown and LaTeX)
``completeness``, ``lr_sensitivity``, ``best``, ``relative_time``, ``divergence_<scale>`` (‖μ‖ of
the output embeddings and the mean logit at the end of each run) and, for the published
scales, ``vs_published`` (and ``vs_published_16M_lrs``), and ``REPORT.md`` embedding them.

How the numbers are made:
- A run's final loss is its ``test_loss``. A diverged run (or one whose test loss is not
  finite) counts as ℓ₀, and every loss is capped at ℓ₀ (METHODS.md's LRS definition).
- ℓ₀ of a (scale, method) is the largest ``initial_loss`` of its runs (the same for every lr
  of one seed: same initial weights and first batch; the cross-entropy at step 0, without a
  regulariser; older logs without ``ce`` give their optimised loss); if none of them logged one, the
  largest of the scale; if no run of the scale did, ln(50304), the loss of a uniform
  prediction over the padded GPT-2 vocabulary, which the logged initial losses sit at.
- Seeds of one (scale, method, lr) are averaged (their capped losses).
- The learning-rate grid of a scale is every lr any run of that scale used, and every method
  seen anywhere is expected at every scale (grids are products). A statistic over a
  (scale, method) with an unfinished lr is never computed: the tables say "—" with k/K, the
  LRS and time figures leave it out, the loss-vs-lr figure draws its finished lrs dashed,
  and REPORT.md opens by listing what is missing.
- Wall-clock times compare only runs that had the same hardware to themselves. When they did
  not (several runs shared a GPU, or the code changed between runs), ``--no-time REASON``
  leaves the time table and figure out and says why in their place.
- Training curves (train cross-entropy, ‖μ‖ of the output embedding, logit mean) come from
  each chosen run's log.jsonl; by default every method at the largest lr of each scale.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure  # no pyplot: no global state; PNGs render with Agg, PDFs with the PDF backend

from .checkpoint import read_log
from .config import ConfigError, config_from_dict, load_toml
from .mitigations import METHODS
from .model import SCALES

FINAL_STATES = ("done", "diverged")   # runs whose final loss is known (a diverged run's is ℓ₀)
TRAINED_STATES = ("done", "trained")  # runs that trained to their last step: their time is comparable
LN_VOCAB = math.log(50304)            # ℓ₀ when no run of a scale logged its initial loss
REQUIRED = ("name", "status", "method", "scale", "lr", "test_loss")

# ----------------------------------------------------------------------------- published reference
# The published numbers (arXiv 2601.02031), copied from ../shared/reference/METHODS.md, "The
# published result": final FineWeb test loss after 100k steps × 64 × 2048 tokens, AdamW, 7 lrs.
PUBLISHED_TOKENS = 100_000 * 64 * 2048
PUBLISHED_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
PUBLISHED_METHODS = ("baseline", "z-loss", "mu-loss", "mu-centering")
PUBLISHED_BEST_LOSS = {"16M": (3.84, 3.84, 3.84, 3.84), "29M": (3.59, 3.58, 3.59, 3.58), "57M": (3.37, 3.37, 3.37, 3.37),
                       "109M": (3.20, 3.20, 3.20, 3.20), "221M": (3.05, 3.05, 3.05, 3.05)}
PUBLISHED_LRS_VALUE = {"16M": (0.306, 0.054, 0.031, 0.028), "29M": (0.391, 0.033, 0.027, 0.029),
                       "57M": (0.508, 0.235, 0.031, 0.041), "109M": (0.344, 0.118, 0.046, 0.051),
                       "221M": (0.412, 0.109, 0.056, 0.061)}
PUBLISHED_EXTRA_TIME_PCT = {"16M": (None, 6.4, 0.4, 0.6), "221M": (None, 0.8, 0.2, 0.3)}  # vs baseline
PUBLISHED_LOSS_16M = {"baseline": (3.961, 3.881, 3.850, 3.841, 3.857, 4.269, 5.065),
                      "mu-centering": (3.962, 3.881, 3.850, 3.842, 3.843, 3.844, 3.842)}  # per PUBLISHED_LRS


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Run:
    """One row of loss_overview.csv, typed; NaN where the CSV has no value."""
    name: str
    status: str
    scale: str
    method: str
    gamma: float
    lr: float
    seed: int
    test_loss: float
    initial_loss: float
    time: float
    steps: int
    tokens: int
    diverged: bool
    loss_kind: str
    mu_out_norm: float = math.nan  # of the final weights (validation.json)
    logit_mean: float = math.nan   # over the validation tokens' logits

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES or self.diverged


def _float(text: str | None, default: float = math.nan) -> float:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(x) and not math.isnan(default) else x


def read_runs(path: Path) -> list[Run]:
    """The rows of a loss_overview.csv, read by column name (extra columns are ignored)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}: is it a loss_overview.csv?")
        rows = list(reader)
    # A run folder whose config could not be read has no lr: it cannot sit on the grid, so it
    # is named here (aggregate already reports it as corrupt) instead of crashing the stage.
    unplaced = [r for r in rows if math.isnan(_float(r.get("lr")))]
    for r in unplaced:
        print(f"warning: {path}: run {r['name']} ({r['status']}) has no learning rate; left out of the "
              "figures and tables", file=sys.stderr)
    rows = [r for r in rows if r not in unplaced]
    return [Run(name=r["name"], status=r["status"], scale=r["scale"], method=r["method"], gamma=_float(r.get("gamma"), 0.0),
                lr=_float(r["lr"]), seed=int(_float(r.get("seed"), 0)), test_loss=_float(r["test_loss"]),
                initial_loss=_float(r.get("initial_loss")), time=_float(r.get("time")), steps=int(_float(r.get("steps"), 0)),
                tokens=int(_float(r.get("tokens"), 0)), diverged=r["status"] == "diverged" or r.get("diverged") == "True",
                loss_kind=r.get("test_loss_kind") or "", mu_out_norm=_float(r.get("mu_out_norm")),
                logit_mean=_float(r.get("logit_mean")))
            for r in rows]


def duplicate_runs(runs: list[Run]) -> list[list[str]]:
    """Names of rows that differ in nothing the analysis keys on (not even the seed): they would be averaged as if seeds."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r.scale, r.method, r.gamma, r.lr, r.seed)].append(r.name)
    return [names for names in groups.values() if len(names) > 1]


# ----------------------------------------------------------------------------- the numbers
def capped_loss(run: Run, l0: float) -> float:
    """The run's final loss for the LRS: min(ℓ, ℓ₀), a diverged run counting as ℓ₀."""
    if run.diverged or not math.isfinite(run.test_loss):
        return l0
    return min(run.test_loss, l0)


def lr_sensitivity(losses: Sequence[float], l0: float) -> float:
    """Wortsman et al.: LRS = (1/(K−1)) · Σ_η [min(ℓ(η), ℓ₀) − ℓ*] over the K grid points, ℓ* the
    best capped loss; a non-finite ℓ(η) (a diverged run) counts as ℓ₀."""
    if len(losses) < 2:
        raise ValueError(f"the LRS needs at least two learning rates, got {len(losses)}")
    capped = [min(x, l0) if math.isfinite(x) else l0 for x in losses]
    best = min(capped)
    return sum(c - best for c in capped) / (len(capped) - 1)


@dataclass
class Series:
    """One (scale, method) over its scale's learning-rate grid."""
    scale: str
    label: str                     # the method, with its γ when the method ran with several
    method: str
    lrs: list[float]               # the scale's grid
    runs: dict[float, list[Run]]   # lr -> its runs (one per seed); an lr without rows is absent
    l0: float

    def loss(self, lr: float) -> float | None:
        """Mean over seeds of the capped final loss; None until every seed of this lr is final."""
        runs = self.runs.get(lr, [])
        if not runs or not all(r.final for r in runs):
            return None
        return sum(capped_loss(r, self.l0) for r in runs) / len(runs)

    def losses(self) -> dict[float, float]:
        return {lr: x for lr in self.lrs if (x := self.loss(lr)) is not None}

    @property
    def complete(self) -> bool:
        return len(self.losses()) == len(self.lrs)

    def progress(self) -> str:
        return f"{len(self.losses())}/{len(self.lrs)}"

    def diverged(self, lr: float) -> int:
        return sum(r.diverged for r in self.runs.get(lr, []))

    def time(self, lr: float) -> float | None:
        """Mean training seconds over seeds, when every seed trained to its last step."""
        runs = self.runs.get(lr, [])
        if not runs or not all(r.status in TRAINED_STATES and math.isfinite(r.time) for r in runs):
            return None
        return sum(r.time for r in runs) / len(runs)


def build_series(runs: list[Run]) -> list[Series]:
    """Group runs into (scale, method) series over each scale's lr grid, ordered by scale then method."""
    gammas = defaultdict(set)
    for r in runs:
        gammas[r.method].add(r.gamma)
    label = lambda r: r.method if len(gammas[r.method]) == 1 else f"{r.method} γ={r.gamma:g}"
    grid, groups, inits = defaultdict(set), defaultdict(lambda: defaultdict(list)), defaultdict(list)
    for r in runs:
        grid[r.scale].add(r.lr)
        groups[(r.scale, label(r))][r.lr].append(r)
        if math.isfinite(r.initial_loss):
            inits[r.scale].append(r.initial_loss)
    series = []
    for (scale, lab), by_lr in groups.items():
        own = [r.initial_loss for rs in by_lr.values() for r in rs if math.isfinite(r.initial_loss)]
        l0 = max(own or inits[scale] or [LN_VOCAB])
        method = next(iter(by_lr.values()))[0].method
        series.append(Series(scale, lab, method, sorted(grid[scale]), dict(by_lr), l0))
    return sorted(series, key=lambda s: (scale_key(s.scale), method_key(s.label)))


def scale_key(scale: str) -> tuple:
    order = list(SCALES)
    return (order.index(scale) if scale in order else len(order), scale)


def method_key(label: str) -> tuple:
    order = list(METHODS)
    parts = label.split(" ")[0].split("+")
    return (tuple(order.index(p) if p in order else len(order) for p in parts), label)


def series_lrs(s: Series) -> float | None:
    """The LRS of a complete series with at least two lrs; None otherwise (never over a partial grid)."""
    if not s.complete or len(s.lrs) < 2:
        return None
    losses = s.losses()
    return lr_sensitivity([losses[lr] for lr in s.lrs], s.l0)


def best(s: Series) -> tuple[float, float] | None:
    """(best loss, its lr) of a complete series; the smaller lr on a tie."""
    if not s.complete:
        return None
    losses = s.losses()
    lr = min(s.lrs, key=lambda x: (losses[x], x))
    return losses[lr], lr


def relative_time(s: Series, baseline: Series) -> tuple[float, int] | None:
    """(mean over lrs of time/baseline time at the same lr, minus 1; number of lrs paired), over the
    lrs where both trained to the end; None when there is no such lr."""
    ratios = [t / tb for lr in s.lrs if (t := s.time(lr)) is not None and (tb := baseline.time(lr)) is not None and tb > 0]
    if not ratios:
        return None
    return sum(ratios) / len(ratios) - 1, len(ratios)


# ----------------------------------------------------------------------------- grid bookkeeping
def scales_of(series: list[Series]) -> list[str]:
    return sorted({s.scale for s in series}, key=scale_key)


def labels_of(series: list[Series]) -> list[str]:
    return sorted({s.label for s in series}, key=method_key)


def lookup(series: list[Series]) -> dict[tuple[str, str], Series]:
    return {(s.scale, s.label): s for s in series}


def unfinished(series: list[Series]) -> list[tuple[str, str, str]]:
    """(scale, method, what is missing) for every hole in the grid: unfinished runs, lrs without
    a row, and (scale, method) pairs without any run."""
    by_key, holes = lookup(series), []
    for scale in scales_of(series):
        for label in labels_of(series):
            s = by_key.get((scale, label))
            if s is None:
                holes.append((scale, label, "no runs at this scale"))
                continue
            for lr in s.lrs:
                runs = s.runs.get(lr, [])
                if not runs:
                    holes.append((scale, label, f"lr {lr:g}: no run"))
                holes += [(scale, label, f"lr {lr:g}: {r.name} is {r.status}") for r in runs if not r.final]
    return holes


# ----------------------------------------------------------------------------- tables
Table = tuple[list[str], list[list[str]]]  # header, rows of cells


def markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---", "†": r"\dag{}",
          "γ": r"\ensuremath{\gamma}", "ℓ": r"\ensuremath{\ell}", "₀": r"\ensuremath{_0}", "μ": r"\ensuremath{\mu}",
          "η": r"\ensuremath{\eta}", "‖": r"\ensuremath{\|}", "≤": r"\ensuremath{\le}", "×": r"\ensuremath{\times}",
          "−": "-"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(c, c) for c in text)


def latex_table(table: Table) -> str:
    """A booktabs tabular (\\usepackage{booktabs}) to \\input into a paper."""
    header, rows = table
    line = lambda cells: " & ".join(latex_escape(c) for c in cells) + r" \\"
    body = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", line(header), r"\midrule",
            *map(line, rows), r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body) + "\n"


def write_table(out: Path, stem: str, table: Table) -> str:
    md = markdown_table(table)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.tex").write_text(latex_table(table))
    return md


def divergence_table(series: list[Series], scale: str) -> Table:
    """Rows: methods; columns: the scale's lrs; cells "‖μ‖ / mean logit" at the end of training,
    averaged over seeds, once every seed has them ("diverged" and "—" otherwise)."""
    rows = []
    for s in (s for s in series if s.scale == scale):
        cells = []
        for lr in s.lrs:
            runs = s.runs.get(lr, [])
            if runs and any(r.diverged for r in runs):
                cells.append("diverged")
            elif runs and all(math.isfinite(r.mu_out_norm) and math.isfinite(r.logit_mean) for r in runs):
                mu, zbar = (sum(getattr(r, k) for r in runs) / len(runs) for k in ("mu_out_norm", "logit_mean"))
                cells.append(f"{mu:.2f} / {zbar:+.2f}")
            else:
                cells.append("—")
        rows.append([s.label] + cells)
    lrs = next((s.lrs for s in series if s.scale == scale), [])
    return ["method"] + [f"lr {lr:g}" for lr in lrs], rows


def _per_scale(series: list[Series], cell, labels: list[str] | None = None) -> Table:
    """Rows: methods; columns: scales; cell(series) gives the text ("no runs" where there is none)."""
    by_key, scales = lookup(series), scales_of(series)
    rows = [[label] + [cell(by_key[(sc, label)]) if (sc, label) in by_key else "no runs" for sc in scales]
            for label in (labels or labels_of(series))]
    return ["method"] + scales, rows


def completeness_table(series: list[Series]) -> Table:
    def cell(s: Series) -> str:
        n_div = sum(s.diverged(lr) for lr in s.lrs)
        return s.progress() + (f", {n_div} diverged" if n_div else "") + f", ℓ₀ {s.l0:.3f}"
    return _per_scale(series, cell)


def _incomplete(s: Series) -> str:
    return f"— ({s.progress()} lrs)"


def lrs_table(series: list[Series]) -> Table:
    def cell(s: Series) -> str:
        if len(s.lrs) < 2:
            return "— (one lr)"
        value = series_lrs(s)
        return _incomplete(s) if value is None else f"{value:.3f}"
    return _per_scale(series, cell)


def best_table(series: list[Series]) -> Table:
    def cell(s: Series) -> str:
        b = best(s)
        return _incomplete(s) if b is None else f"{b[0]:.3f} @ {b[1]:g}"
    return _per_scale(series, cell)


def _time_text(s: Series, baseline: Series | None) -> str:
    r = relative_time(s, baseline) if baseline else None
    if r is None:
        return "—"
    extra, pairs = r
    return f"{100 * extra:+.1f}%" + ("" if pairs == len(s.lrs) else f" ({pairs}/{len(s.lrs)} lrs)")


def time_table(series: list[Series]) -> Table:
    by_key = lookup(series)
    labels = [lab for lab in labels_of(series) if lab != "baseline"]
    return _per_scale(series, lambda s: _time_text(s, by_key.get((s.scale, "baseline"))), labels)


def published_scales(series: list[Series]) -> list[str]:
    return [sc for sc in scales_of(series) if sc in PUBLISHED_BEST_LOSS]


def published_table(series: list[Series], times_comparable: bool = True) -> Table:
    """Ours next to the published numbers, for every published scale and method we ran."""
    by_key = lookup(series)
    header = ["scale", "method", "best loss (ours)", "best loss (published)", "LRS (ours)", "LRS (published)",
              "extra time (ours)", "extra time (published)"]
    rows = []
    for sc in published_scales(series):
        for i, method in enumerate(PUBLISHED_METHODS):
            s = by_key.get((sc, method))
            if s is None:
                continue
            b, value = best(s), series_lrs(s)
            pub_time = PUBLISHED_EXTRA_TIME_PCT.get(sc, (None,) * 4)[i]
            rows.append([sc, method, _incomplete(s) if b is None else f"{b[0]:.3f}", f"{PUBLISHED_BEST_LOSS[sc][i]:.2f}",
                         _incomplete(s) if value is None else f"{value:.3f}", f"{PUBLISHED_LRS_VALUE[sc][i]:.3f}",
                         "—" if method == "baseline" else (_time_text(s, by_key.get((sc, "baseline")))
                                                           if times_comparable else "not comparable"),
                         "—" if pub_time is None else f"{pub_time:+.1f}%"])
    return header, rows


def ranking_lines(series: list[Series]) -> list[str]:
    """Per published scale, our LRS order against the published one, over the published methods
    with every lr of ours (lower LRS first), and whether the two orders agree."""
    by_key, lines = lookup(series), []
    for sc in published_scales(series):
        ours = {m: series_lrs(by_key[(sc, m)]) for m in PUBLISHED_METHODS if (sc, m) in by_key}
        ours = {m: v for m, v in ours.items() if v is not None}
        if len(ours) < 2:
            continue
        published = dict(zip(PUBLISHED_METHODS, PUBLISHED_LRS_VALUE[sc]))
        ranked, ranked_published = sorted(ours, key=ours.get), sorted(ours, key=published.get)
        verdict = "the published order" if ranked == ranked_published else "**not** the published order"
        lines.append(f"- {sc}, least sensitive first: ours " + ", ".join(f"{m} {ours[m]:.3f}" for m in ranked)
                     + "; published " + ", ".join(f"{m} {published[m]:.3f}" for m in ranked_published) + f": {verdict}.")
    return lines


def _loss_text(s: Series | None, lr: float) -> str:
    if s is None or lr not in s.runs:
        return "no run"
    x = s.loss(lr)
    if x is None:
        return "— (" + ", ".join(sorted({r.status for r in s.runs[lr] if not r.final})) + ")"
    n_div = s.diverged(lr)
    return "diverged" if n_div == len(s.runs[lr]) else f"{x:.3f}" + ("†" if n_div else "")


def published_lrs_table(series: list[Series]) -> Table:
    """The 16M losses at each published lr: ours next to the published ones."""
    by_key = lookup(series)
    header, rows = ["lr"], []
    for method in PUBLISHED_LOSS_16M:
        header += [f"{method} (ours)", f"{method} (published)"]
    for i, lr in enumerate(PUBLISHED_LRS):
        row = [f"{lr:g}"]
        for method, published in PUBLISHED_LOSS_16M.items():
            row += [_loss_text(by_key.get(("16M", method)), lr), f"{published[i]:.3f}"]
        rows.append(row)
    return header, rows


# ----------------------------------------------------------------------------- figures
def save(fig: Figure, out: Path, stem: str) -> str:
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{stem}.{ext}", dpi=150, bbox_inches="tight")
    return stem


def _color(label: str, labels: list[str]):
    return f"C{labels.index(label) % 10}"


def loss_vs_lr_figure(series: list[Series], out: Path) -> str:
    """One panel per scale, one line per method; diverged points drawn as x at ℓ₀, unfinished lrs left out."""
    scales, labels = scales_of(series), labels_of(series)
    fig = Figure(figsize=(4.2 * len(scales), 3.8), layout="constrained")
    axes = fig.subplots(1, len(scales), squeeze=False)[0]
    for ax, sc in zip(axes, scales):
        diverged = []
        for s in (s for s in series if s.scale == sc):
            losses = s.losses()
            xs = sorted(losses)
            name = s.label if s.complete else f"{s.label} ({s.progress()}, incomplete)"
            ax.plot(xs, [losses[x] for x in xs], "o-" if s.complete else "o--", color=_color(s.label, labels), label=name, ms=4)
            diverged += [(x, losses[x]) for x in xs if s.diverged(x)]
        if diverged:
            ax.plot(*zip(*diverged), "x", color="black", ms=8, label="diverged (at ℓ₀)")
        grid = next(s.lrs for s in series if s.scale == sc)
        ax.set_xscale("log")
        ax.set_xticks(grid, [f"{x:g}" for x in grid], rotation=45)
        ax.minorticks_off()
        ax.set(xlabel="learning rate", ylabel="final test loss", title=sc)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, out, "loss_vs_lr")


def lrs_figure(series: list[Series], out: Path) -> str:
    """LRS against model size, one line per method, complete series only."""
    scales, labels = scales_of(series), labels_of(series)
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for label in labels:
        points = [(i, v) for i, sc in enumerate(scales) for s in series
                  if s.scale == sc and s.label == label and (v := series_lrs(s)) is not None]
        if points:
            ax.plot(*zip(*points), "o-", color=_color(label, labels), label=label)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no complete (scale, method) grid yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(scales)), scales)
    ax.set(xlabel="model size", ylabel="LR sensitivity (lower is better)", xlim=(-0.5, len(scales) - 0.5))
    ax.grid(alpha=0.3)
    return save(fig, out, "lr_sensitivity")


def time_figure(series: list[Series], out: Path) -> str:
    """Extra wall-clock time vs baseline: bars per scale and method, only where every lr is paired."""
    scales, labels = scales_of(series), [lab for lab in labels_of(series) if lab != "baseline"]
    by_key = lookup(series)
    fig = Figure(figsize=(max(4.0, 0.6 * len(scales) * max(1, len(labels))), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys = [], []
        for i, sc in enumerate(scales):
            s, base = by_key.get((sc, label)), by_key.get((sc, "baseline"))
            r = relative_time(s, base) if s and base else None
            if r is not None and r[1] == len(s.lrs):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(100 * r[0])
        ax.bar(xs, ys, width, color=_color(label, labels_of(series)), label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(scales)), scales)
    ax.set(xlabel="model size", ylabel="extra training time vs baseline (%)")
    if labels:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, out, "relative_time")


CURVE_PANELS = (("ce", "train cross-entropy"), ("mu_out_norm", "‖μ‖ of output embeddings"), ("logit_mean", "logit mean"))


def curves_figure(runs: list[Run], logs: dict[str, list[dict]], out: Path, stem: str, labels: list[str]) -> str:
    """Train cross-entropy, ‖μ_out‖ and logit mean against the step, one line per run."""
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, len(CURVE_PANELS))
    several_seeds = len({r.seed for r in runs}) > 1
    # the methods' colours of the other figures, unless a method appears more than once here
    by_method = len({r.method for r in runs}) == len(runs) and all(r.method in labels for r in runs)
    for i, r in enumerate(runs):
        log = logs[r.name]
        name = f"{r.method} lr={r.lr:g}" + (f" s{r.seed}" if several_seeds else "") + (" (diverged)" if r.diverged else "")
        color = _color(r.method, labels) if by_method else f"C{i % 10}"
        for ax, (key, _) in zip(axes, CURVE_PANELS):
            ax.plot([x["step"] for x in log], [x.get(key, math.nan) for x in log], label=name, color=color, lw=1.2)
    for ax, (_, title) in zip(axes, CURVE_PANELS):
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(fig, out, stem)


def default_curves(runs: list[Run]) -> list[Run]:
    """Every method at the largest lr of each scale (where methods differ most), the lowest seed."""
    picked = []
    for sc in sorted({r.scale for r in runs}, key=scale_key):
        at = [r for r in runs if r.scale == sc]
        top = [r for r in at if r.lr == max(x.lr for x in at)]
        seed = min(r.seed for r in top)
        picked += sorted((r for r in top if r.seed == seed), key=lambda r: method_key(r.method))
    return picked


def select_curves(runs: list[Run], patterns: list[str]) -> list[Run]:
    """Runs whose name matches any pattern (fnmatch: '*lr300-*'); a pattern matching nothing is an error."""
    for p in patterns:
        if not any(fnmatch.fnmatchcase(r.name, p) for r in runs):
            raise ValueError(f"--curves {p!r} matches no run of the CSV")
    return [r for r in runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


# ----------------------------------------------------------------------------- report
def _tokens(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def horizon_lines(runs: list[Run]) -> list[str]:
    """Our training horizon per scale against the published 13.1B tokens."""
    lines = []
    for sc in sorted({r.scale for r in runs}, key=scale_key):
        for steps, tokens in sorted({(r.steps, r.tokens) for r in runs if r.scale == sc and r.steps}):
            lines.append(f"- {sc}: {steps:,} steps × {tokens // steps:,} tokens = {_tokens(tokens)} tokens per run, "
                         f"{100 * tokens / PUBLISHED_TOKENS:.2g}% of the published {_tokens(PUBLISHED_TOKENS)} "
                         "(100,000 steps × 64 × 2,048)")
    return lines


def status_banner(runs: list[Run], series: list[Series]) -> list[str]:
    holes = unfinished(series)
    n_div = sum(r.diverged for r in runs)
    if not holes:
        return [f"**The grid is complete**: all {len(runs)} runs have a final loss ({n_div} diverged, counted at ℓ₀).", ""]
    n_final = sum(r.final for r in runs)
    lines = [f"> **INCOMPLETE GRID — these are not final results.** {n_final} of {len(runs)} runs have a final loss; "
             f"{len(holes)} hole(s) below. Every statistic of a (scale, method) with a hole is shown as \"—\" "
             "with k/K, and left out of the LRS and time figures.", ">", "> | scale | method | missing |",
             "> |:---|:---|:---|"]
    lines += [f"> | {sc} | {label} | {what} |" for sc, label, what in holes]
    return lines + [""]


def figure_md(stem: str, alt: str) -> str:
    return f"![{alt}]({stem}.png)\n\n[PDF]({stem}.pdf)\n"


def published_section(series: list[Series], runs: list[Run], out: Path, times_comparable: bool = True) -> list[str]:
    if not published_scales(series):
        return []
    lines = ["## Ours vs published", "",
             "Published: arXiv 2601.02031 as quoted in METHODS.md (FineWeb test loss, 13.1B tokens per run, lrs "
             + ", ".join(f"{x:g}" for x in PUBLISHED_LRS) + "). Ours: this CSV.", ""]
    lines += horizon_lines([r for r in runs if r.scale in PUBLISHED_BEST_LOSS]) + [""]
    for sc in published_scales(series):
        ours = sorted({r.lr for r in runs if r.scale == sc})
        if tuple(ours) != PUBLISHED_LRS:
            lines += [f"At {sc} our lr grid ({', '.join(f'{x:g}' for x in ours)}) is not the published one: "
                      "LRS values over different grids are not comparable.", ""]
    lines += [write_table(out, "vs_published", published_table(series, times_comparable))]
    ranking = ranking_lines(series)
    if ranking:
        lines += ["Learning-rate sensitivity ranking, over the published methods with every lr run:", ""] + ranking + [""]
    if "16M" in published_scales(series):
        lines += ["", "16M, final loss at each published lr († some seeds diverged, counted at ℓ₀):", "",
                  write_table(out, "vs_published_16M_lrs", published_lrs_table(series))]
    return lines


def curves_section(chosen: list[Run], runs_dir: Path, series: list[Series], out: Path, patterns: list[str]) -> list[str]:
    logs = {r.name: read_log(runs_dir / r.name / "log.jsonl") for r in chosen}
    lines = ["## Training curves", "",
             ("Runs matching " + ", ".join(f"`{p}`" for p in patterns) if patterns else
              "Every method at the largest lr of each scale (choose others with `--curves PATTERN`)")
             + f"; logs read from `{runs_dir}`.", ""]
    without = [r.name for r in chosen if not logs[r.name]]
    if without:
        lines += ["No log.jsonl for: " + ", ".join(f"`{n}`" for n in without), ""]
    for sc in sorted({r.scale for r in chosen}, key=scale_key):
        shown = [r for r in chosen if r.scale == sc and logs[r.name]]
        if shown:
            stem = curves_figure(shown, logs, out, f"curves_{sc}", labels_of(series))
            lines += [f"### {sc}", "", figure_md(stem, f"training curves at {sc}")]
    return lines


def time_section(series: list[Series], out: Path, no_time: str | None) -> list[str]:
    lines = ["## Relative wall-clock time", ""]
    if no_time:
        return lines + [f"Not shown: {no_time}", ""]
    return lines + ["Training seconds relative to the baseline at the same scale and lr, averaged over the lrs where "
                    "both trained to the end (k/K when not all). Comparable only for runs on the same hardware, one at "
                    "a time (else re-run this stage with `--no-time REASON`).", "",
                    write_table(out, "relative_time", time_table(series)), figure_md(time_figure(series, out), "relative time")]


def write_report(csv_path: Path, out: Path, runs_dir: Path, patterns: list[str], no_time: str | None = None) -> Path:
    runs = read_runs(csv_path)
    if not runs:
        raise ValueError(f"{csv_path} has no runs")
    series = build_series(runs)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select_curves(runs, patterns) if patterns else default_curves(runs)
    lines = [f"# Results: {csv_path.parent.name}", "",
             f"Generated by `python -m nanoGPT.results` from `{csv_path}`; do not edit (re-run the stage).", ""]
    lines += status_banner(runs, series)
    lines += ["Training horizon:", ""] + horizon_lines(runs) + [""]
    if any(r.loss_kind == "stablemax" for r in runs):
        lines += ["StableMax runs' test loss is the StableMax cross-entropy (the distribution they were trained to "
                  "output); their softmax cross-entropy is `test_loss_softmax` in the CSV.", ""]
    lines += ["## Grid", "", "Runs with a final loss per (scale, method) over the scale's lr grid, and ℓ₀, the loss at "
              "initialisation that caps every loss (the largest logged initial loss of the series, else of the scale, "
              "else ln 50304):", "",
              write_table(out, "completeness", completeness_table(series)),
              "## Final loss vs learning rate", "",
              "Seeds averaged; a diverged run is drawn as × at ℓ₀ (the loss at initialisation); an unfinished lr is "
              "left out and its method's line is dashed.", "", figure_md(loss_vs_lr_figure(series, out), "final loss vs lr"),
              "## Learning-rate sensitivity", "",
              "LRS = (1/(K−1)) · Σ_η [min(ℓ(η), ℓ₀) − ℓ*] over the K lrs of the scale's grid (METHODS.md), "
              "ℓ₀ as in the grid table; lower is better.", "",
              write_table(out, "lr_sensitivity", lrs_table(series)), figure_md(lrs_figure(series, out), "LR sensitivity"),
              "## Best loss and learning rate", "", "Best final loss over the lr grid, `loss @ lr`:", "",
              write_table(out, "best", best_table(series))]
    lines += time_section(series, out, no_time)
    lines += ["## Logit divergence at the end of training", "",
              "‖μ‖ of the output embeddings / mean logit over the validation tokens, per lr (seeds averaged); the "
              "drift the mitigations act on (mu-centering holds both at 0):", ""]
    for sc in scales_of(series):
        lines += [f"{sc}:", "", write_table(out, f"divergence_{sc}", divergence_table(series, sc))]
    lines += published_section(series, runs, out, times_comparable=not no_time)
    lines += curves_section(chosen, runs_dir, series, out, patterns)
    report = out / "REPORT.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


# ----------------------------------------------------------------------------- CLI
def resolve_csv(inputs: list[Path]) -> tuple[Path, set[str]]:
    """(the loss_overview.csv, the run names it must hold): a CSV or a folder holding one (no
    expectation), or run configs, whose out_dir holds it and whose runs it must list."""
    for x in inputs:
        if not x.exists():
            raise ValueError(f"{x} does not exist")
    if len(inputs) == 1 and inputs[0].suffix == ".csv":
        return inputs[0], set()
    if len(inputs) == 1 and inputs[0].is_dir():
        return inputs[0] / "loss_overview.csv", set()
    configs = [config_from_dict(load_toml(p)) for p in inputs]
    out_dirs = {Path(c.out_dir) for c in configs}
    if len(out_dirs) != 1:
        raise ValueError(f"the run configs write to several output folders ({', '.join(map(str, sorted(out_dirs)))}): "
                         "give the loss_overview.csv")
    return out_dirs.pop() / "loss_overview.csv", {c.name for c in configs}


def check_csv(runs: list[Run], expected: set[str], csv_path: Path) -> None:
    """A CSV aggregated before the grid grew would silently drop runs: refuse it; warn about rows averaged as seeds."""
    absent = sorted(expected - {r.name for r in runs})
    if absent:
        raise ValueError(f"{csv_path} lacks {len(absent)} run(s) of the grid (e.g. {absent[0]}): "
                         "run the aggregation stage (scripts/3_aggregate.sh) again")
    for names in duplicate_runs(runs):
        print(f"warning: {', '.join(names)} share scale, method, γ, lr and seed: averaged as if seeds", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="loss_overview.csv, its folder, or the grid's run configs")
    p.add_argument("--out", type=Path, help="output folder (default: results/ next to the CSV)")
    p.add_argument("--runs-dir", type=Path, help="folder of the run directories, for the curves (default: the CSV's folder)")
    p.add_argument("--curves", nargs="+", default=[], metavar="PATTERN",
                   help="runs whose training curves to draw: names or fnmatch patterns (default: every method at the largest lr of each scale)")
    p.add_argument("--no-time", metavar="REASON",
                   help="leave out the wall-clock comparison, saying why (runs shared a GPU, the code changed between runs)")
    args = p.parse_args(argv)
    try:
        csv_path, expected = resolve_csv(args.inputs)
        if not csv_path.is_file():
            raise ValueError(f"{csv_path} does not exist: run the aggregation stage (scripts/3_aggregate.sh) first")
        check_csv(read_runs(csv_path), expected, csv_path)
        report = write_report(csv_path, args.out or csv_path.parent / "results", args.runs_dir or csv_path.parent, args.curves,
                              args.no_time)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
