#!/usr/bin/env bash
# The README's first command: set up, build the embedded corpus, and run the default grid
# (every method, two learning rates, tiny scale, CPU) through all stages, ending with the
# figures, tables and REPORT.md of stage 4 (its path is the last line printed). No network
# beyond the package install, no GPU. Pass a grid name or file to run another grid.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh
grid=${1:-tiny_cpu}
"$PY" data/prepare_embedded.py
bash scripts/0_run_training.sh "$grid"
bash scripts/1_prepare_validation.sh "$grid"
bash scripts/2_run_validation.sh "$grid"
bash scripts/3_aggregate.sh "$grid"
bash scripts/4_results.sh "$grid"
