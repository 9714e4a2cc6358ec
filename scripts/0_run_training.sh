#!/usr/bin/env bash
# Stage 0: train every run named by the arguments (see scripts/lib.sh), one after another.
#   scripts/0_run_training.sh tiny_cpu                  # a grid by name
#   scripts/0_run_training.sh configs/runs/published/wor40A-*.toml optim.lr=1e-3   # key=value applies to all
#   NPROC_PER_NODE=4 scripts/0_run_training.sh ...      # each run on 4 GPUs through torchrun
# Re-running resumes unfinished runs from their checkpoints and skips finished ones.
source "$(dirname "$0")/lib.sh"
targets=(); overrides=()
for a in "$@"; do case "$a" in *=*) overrides+=("$a");; *) targets+=("$a");; esac; done
load_configs "${targets[@]}"
nproc=${NPROC_PER_NODE:-1}
failed=()  # a failed run (its error is printed above) does not stop the others
for cfg in "${configs[@]}"; do
    echo "=== training $cfg"
    if [ "$nproc" -gt 1 ]; then
        "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m nanoGPT.train "$cfg" "${overrides[@]}" || failed+=("$cfg")
    else
        "$PY" -m nanoGPT.train "$cfg" "${overrides[@]}" || failed+=("$cfg")
    fi
done
echo "stage 0: ${#configs[@]} runs, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
