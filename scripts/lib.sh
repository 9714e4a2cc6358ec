# Shared by the numbered stages: which python, and which run configs an argument names.
# Sourced, not run. The stages hold no logic a user must edit: they take arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1

# run_configs ARG...: the run config files named by each ARG: a grid name (expanded afresh
# from configs/grids/NAME.toml into configs/runs/NAME/, so the grid file is the source of
# truth), a grid file, a run config (.toml) or a folder of run configs (used as they are, for
# hand-edited runs). Default: the tiny CPU grid. Every failure returns at once (a loop's
# status is only its last command's) and keeps its message: a bad grid must say what is wrong.
run_configs() {
    [ $# -gt 0 ] || set -- tiny_cpu
    local arg
    for arg in "$@"; do
        if [ -f "$arg" ] && grep -q '^\[grid\]' "$arg"; then "$PY" -m nanoGPT.config "$arg" || return
        elif [ -f "$arg" ]; then echo "$arg"
        elif [ -d "$arg" ]; then ls "$arg"/*.toml || return
        elif [ -f "configs/grids/$arg.toml" ]; then "$PY" -m nanoGPT.config "configs/grids/$arg.toml" || return
        else
            echo "error: '$arg' is neither a grid in configs/grids/, a grid file, a run config nor a folder of them" >&2
            return 2
        fi
    done
}

# glibc returns the large per-step logit buffers to the OS at every free; re-faulting them
# made CPU training several times slower (see tune_cpu_allocator in nanoGPT/train.py).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4294967296}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}

# load_configs ARG...: fill the array `configs` (fails the stage if an argument names nothing).
load_configs() {
    local listing
    listing=$(run_configs "$@")
    mapfile -t configs <<< "$listing"
}
