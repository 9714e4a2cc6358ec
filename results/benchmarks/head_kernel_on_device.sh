#!/usr/bin/env bash
# One device call (from the repository root, .whl/ carried, output into $OUT): the Triton row
# kernel of the loss head against inductor's fusion, alone on one chunk and in the whole step
# (16M, where the head is largest, and 221M), interleaved twice; and qk-LayerNorm + RoPE's two forms.
set -uo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
log="$OUT/console_head_kernel.txt"
t0=$SECONDS
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; python3 -c "import triton; print('triton', triton.__version__)"; } | tee "$log"
timeout 150 python3 scripts/benchmark_head_kernel.py --out "$OUT" --stem head_kernel_h200 2>&1 | tee -a "$log"
echo "head kernel done at $((SECONDS - t0)) s" | tee -a "$log"
timeout 240 python3 scripts/benchmark.py --scales 16M --methods baseline stablemax baseline stablemax \
    --head chunked chunked-inductor --out "$OUT" --stem head_16M 2>&1 | tee -a "$log"
echo "16M done at $((SECONDS - t0)) s" | tee -a "$log"
timeout 90 python3 scripts/benchmark_qk_rope.py --scales 16M 221M --out "$OUT" --stem qk_rope_h200 2>&1 | tee -a "$log"
echo "qk rope done at $((SECONDS - t0)) s" | tee -a "$log"
timeout $((570 - SECONDS + t0)) python3 scripts/benchmark.py --scales 221M --methods baseline baseline \
    --head chunked chunked-inductor --out "$OUT" --stem head_221M 2>&1 | tee -a "$log"
echo "all done at $((SECONDS - t0)) s" | tee -a "$log"
