#!/usr/bin/env bash
# Issue 5's device run: the 16M scale trained on 1 GPU and on 2 GPUs (DDP over NCCL, torchrun) at
# the same global batch (64 x 2048: micro-batch 64 on one GPU, 32 per rank on two), from the same
# seed on the same shards, then their loss curves and tokens/s side by side. A second 1-GPU run,
# on the other GPU at the same time as the first, measures the noise floor: how far two runs of
# identical setting drift apart on a GPU (non-deterministic reductions), against which the 1-vs-2
# GPU difference is judged. On the 2-GPU kind, from the repository root, .whl/ and data/debian_docs/
# carried:   bash results/ddp_16M/run_on_device.sh [STEPS]      (default 300)
# Writes $OUT/ddp_16M.tgz (the three runs' folders, without checkpoints) and the comparison.
set -euo pipefail
steps=${1:-300}
source results/device_env.sh   # the carried wheels, PYTHONPATH
python3 -m nanoGPT.config configs/grids/repro_16M.toml > /dev/null   # writes configs/runs/repro_16M/
cfg=$(ls configs/runs/repro_16M/*-lr100-baseline-*.toml)   # lr 1e-2
bash results/repro_16M/make_shards.sh
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nvidia-smi topo -m || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), torch.cuda.device_count(), 'GPUs')"
echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-unset}"   # must stay 0 on these machines
overrides=(schedule.max_steps="$steps" log.log_interval=10 log.checkpoint_interval=100000)
out=output/ddp_16M
mkdir -p "$out"   # finished runs are kept and skipped: delete output/ddp_16M to start over
echo "=== 1 GPU, twice at once (GPU 0 and GPU 1)"
CUDA_VISIBLE_DEVICES=0 python3 -m nanoGPT.train "$cfg" "${overrides[@]}" out_dir="$out/1gpu_a" >> "$out.1gpu_a.log" 2>&1 &
a=$!
CUDA_VISIBLE_DEVICES=1 python3 -m nanoGPT.train "$cfg" "${overrides[@]}" out_dir="$out/1gpu_b" >> "$out.1gpu_b.log" 2>&1 &
b=$!
wait $a || true; wait $b || true
tail -n 2 "$out.1gpu_a.log" "$out.1gpu_b.log"
echo "=== 2 GPUs, torchrun, NCCL"
NPROC_PER_NODE=2 bash scripts/0_run_training.sh "$cfg" "${overrides[@]}" out_dir="$out/2gpu" 2>&1 | grep -v "^step" | tail -8
python3 results/ddp_16M/compare_runs.py "$out"/1gpu_a/*/ "$out"/2gpu/*/ --noise "$out"/1gpu_b/*/ --skip 50 \
    --labels "1 GPU" "2 GPUs (DDP)" --out "$OUT/ddp_16M"
tar czf "$OUT/ddp_16M.tgz" --exclude='ckpt*' --exclude=train.lock "$out" "$out".*.log
