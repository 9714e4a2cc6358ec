"""Training-step throughput per scale and method on one GPU (synthetic tokens).

    python scripts/benchmark.py --scales 16M 109M --methods baseline z-loss --out results/benchmarks

For each (scale, method): the model and loss compiled as in training, bf16 autocast, fused
AdamW, the scale's maximum micro-batch at sequence 2048; warm-up steps (compilation) are
excluded, then the median of timed steps, each synchronised. MFU counts 6·(matmul weights)
+ attention FLOPs per token (nanoGPT's count) against a measured bf16 peak (786 TFLOP/s on
the lent H100, PERFORMANCE.md). Writes a markdown table and a CSV with GPU, torch and date.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nanoGPT.config import load_config  # noqa: E402
from nanoGPT.model import GPT, flops_per_token, get_scale  # noqa: E402
from nanoGPT.train import build_optimizer  # noqa: E402

GAMMA = {"z-loss": 1e-4, "mu-loss": 1e-1}


def bench(scale: str, method: str, warmup: int, steps: int, peak_tflops: float) -> dict:
    cfg = load_config(overrides=[f"model.scale={scale}", f"method.name={method}", f"method.gamma={GAMMA.get(method, 0.0)}"])
    micro, T = get_scale(scale).max_micro_batch, cfg.batch.seq_len
    torch.manual_seed(0)
    model = GPT(cfg.gpt_config()).cuda()
    opt = build_optimizer(model, cfg, "cuda")
    mit = cfg.mitigation
    fwd, loss_fn = torch.compile(model), torch.compile(mit.loss)
    x = torch.randint(0, 50257, (micro, T), device="cuda")
    y = torch.randint(0, 50257, (micro, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = loss_fn(fwd(x), y, model.output_embedding)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mit.after_step(model.output_embedding)
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    tps = micro * T / step
    return {"scale": scale, "method": method, "micro_batch": micro, "ms_per_step": round(step * 1e3, 2),
            "tokens_per_s": round(tps), "mfu_pct": round(100 * tps * flops_per_token(cfg.gpt_config(), T) / (peak_tflops * 1e12), 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=["16M", "29M", "57M", "109M", "221M"])
    p.add_argument("--methods", nargs="+", default=["baseline", "z-loss", "mu-loss", "mu-centering", "stablemax", "orthograd"])
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--peak-tflops", type=float, default=786.0)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = p.parse_args()
    rows = []
    for scale in args.scales:
        for method in args.methods:
            rows.append(bench(scale, method, args.warmup, args.steps, args.peak_tflops))
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    head = (f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, {datetime.date.today()}, "
            f"seq 2048, bf16, torch.compile, MFU vs {args.peak_tflops} TFLOP/s\n\n"
            f"Command: python scripts/benchmark.py {' '.join(sys.argv[1:])}\n\n")
    cols = list(rows[0])
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
        "| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.md").write_text(head + table)
    with open(args.out / "benchmark.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print(head + table)


if __name__ == "__main__":
    main()
