#!/usr/bin/env bash
# Stage 1: write validation.toml (checkpoint, validation shards, token budget) for every
# finished run named by the arguments. Options go to nanoGPT.validate: --val GLOB, --val-tokens N.
source "$(dirname "$0")/lib.sh"
targets=(); opts=()
while [ $# -gt 0 ]; do case "$1" in --*) opts+=("$1" "$2"); shift 2;; *) targets+=("$1"); shift;; esac; done
load_configs "${targets[@]}"
"$PY" -m nanoGPT.validate --prepare "${opts[@]}" "${configs[@]}"
