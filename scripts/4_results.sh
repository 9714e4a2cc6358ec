#!/usr/bin/env bash
# Stage 4: figures (PNG, PDF), tables (Markdown, LaTeX) and REPORT.md from the grid's
# loss_overview.csv (stage 3), into results/ inside the runs' output folder; prints the report's path last.
#   scripts/4_results.sh tiny_cpu                                   # output/tiny_cpu/results/REPORT.md
#   scripts/4_results.sh published --curves '*-lr1000-*' --out paper/   # options after the grid go to nanoGPT.results
source "$(dirname "$0")/lib.sh"
targets=()
while [ $# -gt 0 ] && [[ $1 != --* ]]; do targets+=("$1"); shift; done
load_configs "${targets[@]}"
"$PY" -m nanoGPT.results "${configs[@]}" "$@"
