#!/usr/bin/env bash
# One device call (from the repository root, .whl/ carried, output into $OUT): issue 4's table,
# every method at each scale named, at the scales' default micro-batches.
#   bash results/benchmarks/table_on_device.sh 16M 29M 57M
#   bash results/benchmarks/table_on_device.sh 109M 221M
# Everything compiles first, one process per scale in parallel (inductor's on-disk cache); the
# timed invocation then runs one configuration at a time, so ratios come from one machine state.
# With PROBE_CDT=1 it then times the baseline of the last scale again with inductor's
# coordinate-descent tuning of its generated kernels (a longer compile). With ANCHOR=1 it then
# times the nanoGPT anchor (scripts/anchor_nanogpt.py) at the same scales, on the same machine.
set -euo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
mkdir -p /tmp/warm
scales=("$@")
stem=$(IFS=_; echo "${scales[*]}")
log="$OUT/console_table_$stem.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$log"
t0=$SECONDS
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --warmup 2 --steps 1 --out /tmp/warm --stem "w$s" > "/tmp/warm/$s.log" 2>&1 &
    if [[ "${ANCHOR:-0}" == 1 ]]; then
        python3 scripts/anchor_nanogpt.py --scales "$s" --out /tmp/warm --stem "a$s" > "/tmp/warm/a$s.log" 2>&1 &
    fi
done
wait
echo "compiled in $((SECONDS - t0)) s" | tee -a "$log"
python3 scripts/benchmark.py --scales "${scales[@]}" --out "$OUT" --stem "table_$stem" 2>&1 | tee -a "$log"
echo "timed in $((SECONDS - t0)) s" | tee -a "$log"
if [[ "${PROBE_CDT:-0}" == 1 ]]; then
    last=${scales[-1]}
    TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 python3 scripts/benchmark.py --scales "$last" --methods baseline \
        --out "$OUT" --stem "coordinate_descent_$last" 2>&1 | tee -a "$log"
fi
if [[ "${ANCHOR:-0}" == 1 ]]; then
    python3 scripts/anchor_nanogpt.py --scales "${scales[@]}" --out "$OUT" --stem "anchor_$stem" 2>&1 | tee -a "$log"
fi
echo "all done in $((SECONDS - t0)) s" | tee -a "$log"
