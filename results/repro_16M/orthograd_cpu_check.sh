#!/usr/bin/env bash
# The CPU check behind point 6 of README.md: does ⊥Grad stall training at a low learning rate
# because of the output embedding? Tiny model, embedded corpus, 300 steps at lr 3e-4, one seed:
# the baseline, ⊥Grad on every tensor, ⊥Grad without the LayerNorm gains, ⊥Grad without the
# output embedding. Prints each run's last training loss. About 6 minutes on 2 CPU cores.
set -euo pipefail
PY=${PYTHON:-python}
out=${1:-output/orthograd_cpu_check}
common=(model.scale=tiny batch.batch_size=8 batch.seq_len=128 schedule.max_steps=300 schedule.warmup_steps=15
        "data.train=data/embedded/embedded_train_*.bin" "data.val=data/embedded/embedded_val_*.bin"
        log.log_interval=25 log.checkpoint_interval=1000 optim.lr=3e-4)
"$PY" -m nanoGPT.train "${common[@]}" method.name=baseline out_dir="$out/baseline" > /dev/null
"$PY" -m nanoGPT.train "${common[@]}" method.name=orthograd out_dir="$out/orthograd" > /dev/null
"$PY" -m nanoGPT.train "${common[@]}" method.name=orthograd 'method.orthograd_skip=["ln"]' out_dir="$out/orthograd_skip_ln" > /dev/null
"$PY" -m nanoGPT.train "${common[@]}" method.name=orthograd 'method.orthograd_skip=["lm_head"]' out_dir="$out/orthograd_skip_lm_head" > /dev/null
for d in baseline orthograd orthograd_skip_ln orthograd_skip_lm_head; do
    printf '%-24s ' "$d"; tail -n 1 "$out/$d"/*/log.jsonl | "$PY" -c "import json, sys; r = json.load(sys.stdin); print(f\"step {r['step']}: loss {r['loss']:.3f}, logit std {r['logit_std']:.3f}\")"
done
