#!/usr/bin/env bash
# One device call (from the repository root, .whl/ carried, output into $OUT), session 15:
#  1. each SDPA backend alone on our five attention shapes (head dims 56 ... 208);
#  2. the whole step at every scale: baseline and ⊥Grad (now compiled with combo kernels),
#     then the baseline with the flash backend forced, and a profile of that at 221M.
#   bash results/benchmarks/attention_and_orthograd_on_device.sh [flash|efficient]
# Everything compiles first, in parallel processes (inductor's on-disk cache), in two waves
# that fit the GPU's memory; the timed invocations then run one configuration at a time.
set -euo pipefail
backend=${1:-flash}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/warm
log="$OUT/console_attention_orthograd.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$log"
t0=$SECONDS
python3 scripts/benchmark_attention.py --out "$OUT" 2>&1 | tee -a "$log"
scales=(16M 29M 57M 109M 221M)
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --methods baseline orthograd --warmup 2 --steps 1 --out /tmp/warm \
        --stem "w$s" > "/tmp/warm/$s.log" 2>&1 &
done
wait
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --methods baseline --attention "$backend" --warmup 2 --steps 1 \
        --out /tmp/warm --stem "a$s" > "/tmp/warm/a$s.log" 2>&1 &
done
wait
echo "compiled in $((SECONDS - t0)) s" | tee -a "$log"
python3 scripts/benchmark.py --methods baseline orthograd --out "$OUT" --stem orthograd_combo 2>&1 | tee -a "$log"
python3 scripts/benchmark.py --methods baseline --attention "$backend" --out "$OUT" --stem "attention_$backend" 2>&1 | tee -a "$log"
echo "timed in $((SECONDS - t0)) s" | tee -a "$log"
python3 scripts/benchmark.py --scales 221M --methods baseline --attention "$backend" --profile --warmup 5 --steps 10 \
    --out /tmp/prof --stem p 2>&1 | tail -40 | tee -a "$log"
cp /tmp/prof/profile_*.md "$OUT/"
echo "all done in $((SECONDS - t0)) s" | tee -a "$log"
