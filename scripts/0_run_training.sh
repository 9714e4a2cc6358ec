#!/usr/bin/env bash
# Stage 0: train every run named by the arguments (see scripts/lib.sh).
#   scripts/0_run_training.sh tiny_cpu                  # a grid by name
#   scripts/0_run_training.sh configs/runs/published/wor40A-*.toml optim.lr=1e-3   # key=value applies to all
#   NPROC_PER_NODE=4 scripts/0_run_training.sh ...      # each run on 4 GPUs through torchrun, one run at a time
#   RUNS_PER_GPU=2 scripts/0_run_training.sh ...        # several runs at once: RUNS_PER_GPU on each GPU
# With one process per run, every visible GPU (GPUS=0,1,... to choose) takes RUNS_PER_GPU
# runs at a time (default 1): a 4-GPU machine trains four runs at once. Runs then write their
# console output to LOG_DIR (default logs/train/) instead of the terminal. Re-running resumes
# unfinished runs from their checkpoints and skips finished ones.
source "$(dirname "$0")/lib.sh"
targets=(); overrides=()
for a in "$@"; do case "$a" in *=*) overrides+=("$a");; *) targets+=("$a");; esac; done
load_configs "${targets[@]}"
nproc=${NPROC_PER_NODE:-1}
per_gpu=${RUNS_PER_GPU:-1}
[[ $per_gpu =~ ^[1-9][0-9]*$ ]] || { echo "error: RUNS_PER_GPU must be a positive integer, got '$per_gpu'" >&2; exit 2; }
if [ -n "${GPUS:-}" ]; then IFS=, read -ra gpus <<< "$GPUS"
elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"  # e.g. slurm's allocation
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
else gpus=(""); fi  # CPU: RUNS_PER_GPU processes at once, no device to pin
slots=()
for g in "${gpus[@]}"; do for ((r = 0; r < per_gpu; r++)); do slots+=("$g"); done; done
[ "$nproc" -gt 1 ] && slots=("")  # torchrun runs use every GPU themselves: one at a time

train_one() {
    if [ "$nproc" -gt 1 ]; then
        "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m nanoGPT.train "$1" "${overrides[@]}"
    else
        "$PY" -m nanoGPT.train "$1" "${overrides[@]}"
    fi
}

failed=()  # a failed run (its error is printed above, or in its log) does not stop the others
if [ "${#slots[@]}" -eq 1 ]; then
    for cfg in "${configs[@]}"; do
        echo "=== training $cfg"
        train_one "$cfg" || failed+=("$cfg")
    done
else
    log_dir=${LOG_DIR:-logs/train}
    mkdir -p "$log_dir"
    failed_list=$(mktemp)
    pids=()
    for cfg in "${configs[@]}"; do
        while :; do  # the first slot whose run has ended (its GPU then has room for one more)
            for i in "${!slots[@]}"; do
                if [ -z "${pids[$i]:-}" ] || ! kill -0 "${pids[$i]}" 2>/dev/null; then free=$i; break 2; fi
            done
            wait -n || true
        done
        log="$log_dir/$(basename "$cfg" .toml).log"
        echo "=== training $cfg${slots[$free]:+ on GPU ${slots[$free]}} -> $log"
        ( if [ -n "${slots[$free]}" ]; then export CUDA_VISIBLE_DEVICES=${slots[$free]}; fi
          train_one "$cfg" > "$log" 2>&1 || { echo "$cfg" >> "$failed_list"; echo "=== failed: $cfg (see $log)"; } ) &
        pids[$free]=$!
    done
    wait
    mapfile -t failed < "$failed_list"
    rm -f "$failed_list"
fi
echo "stage 0: ${#configs[@]} runs, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
