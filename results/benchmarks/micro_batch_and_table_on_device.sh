#!/usr/bin/env bash
# One device call (from the repository root, .whl/ carried, output into $OUT): issue 4's table of
# 6 methods at each scale named, then the baseline at the scale's micro-batch and at twice it
# (does a larger micro-batch than the anchor's pay, now that the chunked head leaves memory free?).
#   bash results/benchmarks/micro_batch_and_table_on_device.sh 16M 29M 57M
#   bash results/benchmarks/micro_batch_and_table_on_device.sh 109M 221M
# Everything compiles first, in parallel processes (inductor's on-disk cache); the timed
# invocations then run one configuration at a time, so ratios come from one machine state.
set -euo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
mkdir -p /tmp/warm /tmp/mb
scales=("$@")
stem=$(IFS=_; echo "${scales[*]}")
double() { python3 -c "import sys; from nanoGPT.model import get_scale; print(2 * get_scale(sys.argv[1]).max_micro_batch)" "$1"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/console_$stem.txt"
t0=$SECONDS
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --warmup 2 --steps 1 --out /tmp/warm --stem "w$s" > "/tmp/warm/$s.log" 2>&1 &
    python3 scripts/benchmark.py --scales "$s" --methods baseline --micro-batch "$(double "$s")" --warmup 2 --steps 1 \
        --out /tmp/warm --stem "w2$s" > "/tmp/warm/2$s.log" 2>&1 &
done
wait
echo "compiled in $((SECONDS - t0)) s"
python3 scripts/benchmark.py --scales "${scales[@]}" --out "$OUT" --stem "methods_$stem" 2>&1 | tee -a "$OUT/console_$stem.txt"
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --methods baseline --micro-batch 0 "$(double "$s")" --out /tmp/mb \
        --stem "micro_batch_$s" 2>&1 | tee -a "$OUT/console_$stem.txt"
done
cat /tmp/mb/micro_batch_*.md > "$OUT/micro_batch_$stem.md"   # one table per scale, each with its command
{ head -1 "/tmp/mb/micro_batch_${scales[0]}.csv"; for s in "${scales[@]}"; do tail -n +2 "/tmp/mb/micro_batch_$s.csv"; done; } \
    > "$OUT/micro_batch_$stem.csv"
echo "all done in $((SECONDS - t0)) s"
