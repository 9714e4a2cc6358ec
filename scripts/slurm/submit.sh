#!/usr/bin/env bash
# Submit runs to slurm in one command: the arguments name runs as for the numbered stages (a
# grid name, a grid file, run configs or a folder of them), then the options of
# scripts/slurm/submit.py (filters, --dry-run, ...), then after `--` options for every sbatch.
#   scripts/slurm/submit.sh published --dry-run
#   scripts/slurm/submit.sh published --scale 16M --method baseline,z-loss -- --partition=gpu --time=24:00:00
source "$(dirname "$0")/../lib.sh"
targets=()
while [ $# -gt 0 ] && [[ "$1" != -* ]]; do targets+=("$1"); shift; done
load_configs "${targets[@]}"
exec "$PY" scripts/slurm/submit.py "${configs[@]}" "$@"
