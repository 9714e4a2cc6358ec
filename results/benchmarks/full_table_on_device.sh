#!/usr/bin/env bash
# Issue 4's full table, 6 methods at each scale named (default all 5), from the repository root
# with .whl/ carried, output into $OUT:
#   bash results/benchmarks/full_table_on_device.sh 16M 29M 57M    # one device call (~6 min)
#   bash results/benchmarks/full_table_on_device.sh 109M 221M      # another
# Each (scale, method) compiles its own step, about
# 30-60 s alone. So first every scale compiles in parallel, each in its own process (16 CPU
# cores; the five steps' peaks total 67 GiB, which fits one 80 GB GPU), filling inductor's
# on-disk cache. Then the timed invocation runs one configuration at a time from that cache,
# and every ratio comes from the same machine state.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/warm
scales=("$@"); [ $# -gt 0 ] || scales=(16M 29M 57M 109M 221M)
for s in "${scales[@]}"; do
    python3 scripts/benchmark.py --scales "$s" --warmup 2 --steps 1 --out /tmp/warm --stem "warm$s" > "/tmp/warm/$s.log" 2>&1 &
done
wait
python3 scripts/benchmark.py --scales "${scales[@]}" --out "$OUT" --stem "benchmark_methods_$(IFS=_; echo "${scales[*]}")"
