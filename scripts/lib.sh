# Shared by the numbered stages: which python, and which run configs an argument names.
# Sourced, not run. The stages hold no logic a user must edit: they take arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1

# run_configs ARG...: the run config files named by each ARG, which may be a run config
# (.toml), a folder of them, a grid name (configs/runs/NAME, generated from
# configs/grids/NAME.toml when missing) or a grid file. Default: the tiny CPU grid.
run_configs() {
    [ $# -gt 0 ] || set -- tiny_cpu
    local arg name
    for arg in "$@"; do
        if [ -f "$arg" ] && grep -q '^\[grid\]' "$arg"; then
            name=$("$PY" -c 'import sys; from nanoGPT.config import load_grid; print(load_grid(sys.argv[1])[0].name)' "$arg")
            "$PY" -m nanoGPT.config "$arg" >/dev/null
            ls configs/runs/"$name"/*.toml
        elif [ -f "$arg" ]; then echo "$arg"
        elif [ -d "$arg" ]; then ls "$arg"/*.toml
        elif [ -d "configs/runs/$arg" ]; then ls configs/runs/"$arg"/*.toml
        elif [ -f "configs/grids/$arg.toml" ]; then
            "$PY" -m nanoGPT.config "configs/grids/$arg.toml" >/dev/null
            ls configs/runs/"$arg"/*.toml
        else
            echo "error: '$arg' is neither a run config, a folder of them, nor a grid in configs/grids/" >&2
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
