#!/usr/bin/env bash
# Where the runs stand (done, trained, running, preempted, interrupted, diverged, missing, ...):
#   scripts/status.sh published                       # a grid by name, a grid file, run configs or an output folder
#   scripts/status.sh published --state interrupted,missing
source "$(dirname "$0")/lib.sh"
exec "$PY" -m nanoGPT.status "$@"
