#!/usr/bin/env bash
# One device call (repository root, .whl/ carried, output into $OUT): the nanoGPT anchor
# (scripts/anchor_nanogpt.py) and our baseline at the five scales on the same GPU in the same
# call, then a profile of ⊥Grad against the baseline at 221M.
#   bash results/benchmarks/anchor_on_device.sh
# Compilation first, in parallel processes (two waves, to stay within the GPU's memory), then
# every timed measurement one at a time.
set -euo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
mkdir -p /tmp/warm
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/console.txt"
t0=$SECONDS
warm_anchor() { python3 scripts/anchor_nanogpt.py --scales "$1" --out /tmp/warm --stem "a$1" > "/tmp/warm/a$1.log" 2>&1; }
warm_ours() { python3 scripts/benchmark.py --scales "$1" --methods "${@:2}" --warmup 2 --steps 1 --out /tmp/warm --stem "w$1" > "/tmp/warm/w$1.log" 2>&1; }
warm_anchor 16M & warm_anchor 29M & warm_anchor 57M & warm_ours 16M baseline & warm_ours 29M baseline & wait
warm_anchor 109M & warm_anchor 221M & warm_ours 57M baseline & warm_ours 109M baseline & warm_ours 221M baseline orthograd & wait
echo "compiled in $((SECONDS - t0)) s" | tee -a "$OUT/console.txt"
python3 scripts/anchor_nanogpt.py --out "$OUT" --stem anchor_nanogpt_h200 2>&1 | tee -a "$OUT/console.txt"
python3 scripts/benchmark.py --methods baseline --out "$OUT" --stem baseline_h200 2>&1 | tee -a "$OUT/console.txt"
python3 scripts/benchmark.py --scales 221M --methods baseline orthograd --profile --warmup 5 --steps 10 --out /tmp/prof \
    --stem profile 2>&1 | tee -a "$OUT/console.txt"
cp /tmp/prof/profile_221M_*.md "$OUT/"
echo "all done in $((SECONDS - t0)) s" | tee -a "$OUT/console.txt"
