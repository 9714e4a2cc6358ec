#!/usr/bin/env bash
# Stage 3: one row per run (done, trained, running, interrupted, diverged, not started, missing,
# or corrupt: <file and what>) in loss_overview.csv inside the runs' output folder; prints its path last.
source "$(dirname "$0")/lib.sh"
load_configs "$@"
"$PY" -m nanoGPT.aggregate "${configs[@]}"
