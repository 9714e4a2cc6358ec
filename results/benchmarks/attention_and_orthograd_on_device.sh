#!/usr/bin/env bash
# One device call (from the repository root, .whl/ carried, output into $OUT), session 15 (call 10):
#  1. each SDPA backend alone on our five attention shapes (head dims 56 ... 208);
#  2. the baseline and ⊥Grad (compiled with combo kernels) at every scale.
#   bash results/benchmarks/attention_and_orthograd_on_device.sh
# As run, it also timed the baseline with `sdpa_kernel(FLASH_ATTENTION)` around the compiled
# step: no change at any scale (the context did not reach the compiled graph, which kept cuDNN),
# so that option was removed from scripts/benchmark.py and from this script.
set -euo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
mkdir -p /tmp/warm
log="$OUT/console_attention_orthograd.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$log"
t0=$SECONDS
python3 scripts/benchmark_attention.py --out "$OUT" 2>&1 | tee -a "$log"
for s in 16M 29M 57M 109M 221M; do   # compile (inductor's on-disk cache), not timed
    python3 scripts/benchmark.py --scales "$s" --methods baseline orthograd --warmup 2 --steps 1 --out /tmp/warm \
        --stem "w$s" > "/tmp/warm/$s.log" 2>&1 &
done
wait
echo "compiled in $((SECONDS - t0)) s" | tee -a "$log"
python3 scripts/benchmark.py --methods baseline orthograd --out "$OUT" --stem orthograd_combo 2>&1 | tee -a "$log"
echo "all done in $((SECONDS - t0)) s" | tee -a "$log"
