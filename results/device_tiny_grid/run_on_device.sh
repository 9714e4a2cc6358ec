#!/usr/bin/env bash
# One device call (repository root, .whl/ carried, output into $OUT): the default tiny grid on
# the GPU through training, validation and aggregation (README.md in this folder).
set -euo pipefail
source results/device_env.sh   # the carried wheels, PYTHONPATH
python3 data/prepare_embedded.py && python3 -m nanoGPT.config configs/grids/tiny_cpu.toml
mkdir -p output/tiny_cpu
ls configs/runs/tiny_cpu/*.toml | xargs -P 4 -I{} sh -c 'python3 -m nanoGPT.train {} > output/tiny_cpu/$(basename {} .toml).train.log 2>&1'
bash scripts/1_prepare_validation.sh tiny_cpu && bash scripts/2_run_validation.sh tiny_cpu && bash scripts/3_aggregate.sh tiny_cpu
find output/tiny_cpu -name loss_overview.csv -exec cp {} "$OUT/" \;
tail -n 3 output/tiny_cpu/*.train.log > "$OUT/train_tails.txt"
