#!/usr/bin/env bash
# Issue 4's full table, 5 scales x 6 methods, in one device call (run from the repository root
# with .whl/ carried; output into $OUT). Each (scale, method) compiles its own step, about
# 30-60 s alone. So first every scale compiles in parallel, each in its own process (16 CPU
# cores; the five steps' peaks total 67 GiB, which fits one 80 GB GPU), filling inductor's
# on-disk cache. Then the timed invocation runs one configuration at a time from that cache,
# and every ratio comes from the same machine state.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/warm
for s in 16M 29M 57M 109M 221M; do
    python3 scripts/benchmark.py --scales "$s" --warmup 2 --steps 1 --out /tmp/warm --stem "warm$s" > "/tmp/warm/$s.log" 2>&1 &
done
wait
python3 scripts/benchmark.py --out "$OUT" --stem benchmark_all_scales_methods
