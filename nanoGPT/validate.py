"""Validation: evaluate a run's final checkpoint on a fixed validation token budget.

    python -m nanoGPT.validate --prepare RUN ...   # stage 1: write <run_dir>/validation.toml
    python -m nanoGPT.validate RUN ...             # stage 2: evaluate, write <run_dir>/validation.json

RUN is a run directory or the run's config file.

Every run is evaluated on the same first ``val_tokens`` predicted tokens of the validation
shards. ``test_loss`` is the cross-entropy of the distribution the model was trained to
output (softmax, or StableMax for StableMax runs); ``test_loss_softmax`` is always the softmax
cross-entropy of the same logits, so StableMax runs can be compared both ways.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import tomli_w
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, RunDirError, atomic_write, describe_os_error, load_checkpoint, read_status, write_json
from .config import ConfigError, RunConfig, config_from_dict, load_config, load_toml
from .data import DataError, eval_batches, resolve_shards
from .fused_head import CE_SUM, LSE_SQ_SUM, N_KEPT, SOFTMAX_CE_SUM, Z_SQ_SUM, Z_SUM, LossHead
from .mitigations import output_mean
from .model import GPT

SPEC = "validation.toml"
RESULT = "validation.json"
SPEC_KEYS = {"checkpoint": str, "val": str, "val_tokens": int, "batch_size": int, "seq_len": int}


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no config.toml")
    return config_from_dict(load_toml(path))


def prepare(run_dir: Path, val: str | None = None, val_tokens: int | None = None) -> Path | None:
    """Write the validation spec of a finished run; return None (and say why) for any other."""
    cfg = load_run_config(run_dir)
    state = read_status(run_dir)["state"]
    if state != "finished":
        print(f"{run_dir.name}: {state}, not validated")
        return None
    if val_tokens is not None and val_tokens < 1:
        raise ConfigError(f"--val-tokens must be >= 1, got {val_tokens}")
    spec = {"checkpoint": str(run_dir / "ckpt.pt"), "val": val or cfg.data.val,
            "val_tokens": val_tokens or cfg.data.val_tokens, "batch_size": cfg.data.val_batch_size,
            "seq_len": cfg.batch.seq_len}
    atomic_write(run_dir / SPEC, tomli_w.dumps(spec).encode())
    return run_dir / SPEC


def load_spec(run_dir: Path, cfg: RunConfig) -> dict:
    """validation.toml, checked: a hand edit or a damaged file is named before any work."""
    path = run_dir / SPEC
    spec = load_toml(path)
    for key, tp in SPEC_KEYS.items():
        if not isinstance(spec.get(key), tp) or isinstance(spec.get(key), bool):
            raise ConfigError(f"{path}: '{key}' must be a {tp.__name__}, got {spec.get(key)!r}; run stage 1 (--prepare) again")
        if tp is int and spec[key] < 1:
            raise ConfigError(f"{path}: '{key}' must be >= 1, got {spec[key]}")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(SPEC_KEYS)}")
    # The model's context length is the batch.seq_len it was trained with (its RoPE tables end there).
    if spec["seq_len"] > cfg.batch.seq_len:
        raise ConfigError(f"{path}: 'seq_len' {spec['seq_len']} is above the model's context length {cfg.batch.seq_len} "
                          f"(the batch.seq_len it was trained with)")
    return spec


@torch.no_grad()
def evaluate(run_dir: Path, device: str = "auto") -> dict:
    cfg = load_run_config(run_dir)
    spec = load_spec(run_dir, cfg)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT(cfg.gpt_config())
    model.load_state_dict(load_checkpoint(spec["checkpoint"])["model"])
    model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    stablemax = cfg.mitigation.stablemax
    # The training loss head, without gradients: one chunked pass gives both cross-entropies
    # and the logit statistics, and no batch's logits exist all at once. Not torch.compiled:
    # that would cost more than the seconds a validation budget takes (on a GPU the row math is
    # still the head's Triton kernel, built once and cached on disk by Triton).
    head = LossHead(stablemax=stablemax, float32_logits=cfg.model.float32_logits)  # the numerics it trained with

    sums, n_logits, t0 = None, 0, time.perf_counter()
    batches = eval_batches(resolve_shards(spec["val"]), spec["val_tokens"], spec["batch_size"], spec["seq_len"],
                           vocab_size=cfg.model.vocab_size, device=device)
    for x, y in tqdm(batches, desc=f"validating {run_dir.name}", leave=False, disable=not sys.stderr.isatty()):
        with autocast:
            t = model(x, y, loss_head=head)["sums"].double()
        sums = t if sums is None else sums + t  # on the device: one sync at the end
        n_logits += y.numel() * cfg.model.vocab_size
    sums = sums.tolist()

    n_tokens = int(sums[N_KEPT])
    softmax_ce = sums[SOFTMAX_CE_SUM] / n_tokens
    test_loss = sums[CE_SUM] / n_tokens
    logit_mean = sums[Z_SUM] / n_logits
    E, W = model.output_embedding.float(), model.wte.weight.float()
    result = {
        "test_loss": test_loss, "test_perplexity": math.exp(min(test_loss, 700.0)),
        "test_loss_kind": "stablemax" if stablemax else "softmax", "test_loss_softmax": softmax_ce,
        "val_tokens": n_tokens, "mu_out_norm": output_mean(E).norm().item(), "mu_in_norm": output_mean(W).norm().item(),
        "emb_out_norm": E.norm(dim=1).mean().item(), "emb_in_norm": W.norm(dim=1).mean().item(),
        "logit_mean": logit_mean, "logit_std": math.sqrt(max(0.0, sums[Z_SQ_SUM] / n_logits - logit_mean ** 2)),
        "lse_sq_mean": sums[LSE_SQ_SUM] / n_tokens, "eval_seconds": time.perf_counter() - t0,
    }
    write_json(run_dir / RESULT, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories or run config files")
    p.add_argument("--prepare", action="store_true", help="stage 1: write validation.toml for each finished run")
    p.add_argument("--val", help="override the validation shards (glob) when preparing")
    p.add_argument("--val-tokens", type=int, help="override the validation token budget when preparing")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    failed = 0
    for run in args.runs:
        run_dir = run
        try:
            if run.is_file():
                run_dir = load_config(run).run_dir
            if args.prepare:
                spec = prepare(run_dir, args.val, args.val_tokens)
                if spec:
                    print(f"{run_dir.name}: wrote {spec}")
            elif (run_dir / SPEC).exists():
                r = evaluate(run_dir, args.device)
                print(f"{run_dir.name}: test_loss {r['test_loss']:.4f} ({r['test_loss_kind']}), "
                      f"softmax CE {r['test_loss_softmax']:.4f} on {r['val_tokens']:,} tokens")
            else:
                print(f"{run_dir.name}: no {SPEC} (not finished, or stage 1 not run), skipped")
        except (ConfigError, DataError, CheckpointError, RunDirError) as e:
            print(f"error: {run_dir.name}: {e}", file=sys.stderr)
            failed += 1
        except OSError as e:  # the file system refused: a full disk, no permission
            print(f"error: {run_dir.name}: {describe_os_error(e)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
