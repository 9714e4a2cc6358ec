#!/usr/bin/env bash
# Stage 2: evaluate the final checkpoint of every prepared run on its fixed validation budget.
source "$(dirname "$0")/lib.sh"
load_configs "$@"
"$PY" -m nanoGPT.validate "${configs[@]}"
