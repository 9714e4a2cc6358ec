"""Training-step throughput, MFU and peak memory per scale and method on one GPU.

    python scripts/benchmark.py                                   # 5 scales x 6 methods
    python scripts/benchmark.py --scales 16M --methods baseline --head naive chunked --profile
    python scripts/benchmark.py --scales 16M --methods baseline --concurrent 1 2 4 [--mps]

Each (scale, method) runs the training step of nanoGPT/train.py on synthetic tokens: the
compiled model, the chunked loss head with its Triton row kernel (or, for comparison, with
--head chunked-inductor the same head with inductor's fusion of the row math, and with --head
naive whole-batch logits and the compiled unchunked loss), backward, gradient clipping, the
divergence monitor, fused AdamW (wrapped in ⊥Grad where the method says), mu-centering; the loss head's logit
diagnostics on every log_interval-th step only, as in training. One micro-batch per step
(the scale's largest, or --micro-batch), sequence 2048, bf16 autocast, as nanoGPT's bench.py
measures its anchor. Warm-up steps (compilation) are excluded; the timed steps are queued
without host syncs and timed with CUDA events, and the median step is reported. MFU counts
nanoGPT's FLOPs per token (6 x matmul weights + attention) against a bf16 peak of 786 TFLOP/s
(PERFORMANCE.md's 8192^3 matmul on the lent H100; --peak-tflops 0 measures it here, which
varied from 747 to 797 between calls, too noisy to compare MFU across runs). Peak memory is torch.cuda.max_memory_allocated.

Run to run, the same configuration varies by about 1% within one invocation: to compare two
methods at that level, interleave them (`--methods baseline mu-centering baseline mu-centering`).

--concurrent N runs N copies of one configuration at once on the GPU, each its own process
(with --mps under CUDA MPS, started and stopped here), and reports their total tokens/s.
Writes benchmark.md and benchmark.csv (and profile_*.md) into --out, with GPU, torch, date
and this command.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nanoGPT.config import load_config  # noqa: E402
from nanoGPT.fused_head import LossHead  # noqa: E402
from nanoGPT.model import GPT, flops_per_token, get_scale  # noqa: E402
from nanoGPT.train import DivergenceMonitor, build_optimizer, forward_loss, optimizer_update  # noqa: E402

GAMMA = {"z-loss": 1e-4, "mu-loss": 1e-1}
METHODS = ["baseline", "z-loss", "mu-loss", "mu-centering", "stablemax", "orthograd"]


def measure_peak_tflops() -> float:
    """Dense bf16 matmul throughput (8192^3), the denominator of MFU."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 50
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t0) / 1e12


class NaiveHead:
    """The unchunked head as before the chunked one: whole-batch logits, then the method's
    loss (mu-loss's penalty included), traced into the model's compiled graph."""

    def __init__(self, mitigation):
        self.loss = mitigation.loss

    def __call__(self, h, W, targets):
        return self.loss(torch.nn.functional.linear(h, W), targets, W)


def build_step(scale: str, method: str, micro: int, head_kind: str):
    cfg = load_config(overrides=[f"model.scale={scale}", f"method.name={method}", f"method.gamma={GAMMA.get(method, 0.0)}"])
    T = cfg.batch.seq_len
    torch.manual_seed(0)
    model = GPT(cfg.gpt_config()).cuda()
    opt = build_optimizer(model, cfg, "cuda", compile=True)
    mit = cfg.mitigation
    head = NaiveHead(mit) if head_kind == "naive" else LossHead.for_mitigation(
        mit, compiled=True, triton=head_kind == "chunked", float32_logits=cfg.model.float32_logits)
    quiet_head = head if head_kind == "naive" else replace(head, diagnostics=False)
    fwd = torch.compile(model)
    monitor = DivergenceMonitor(0.0, torch.device("cuda"))
    x = torch.randint(0, 50257, (micro, T), device="cuda")
    y = torch.randint(0, 50257, (micro, T), device="cuda")

    def step(i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if head_kind == "naive":
                loss = fwd(x, y, loss_head=head)["loss"]
            else:
                # as in training: the logit diagnostics only on log steps (the median step has none)
                loss, _, _ = forward_loss(fwd, model, x, y, head if i % cfg.log.log_interval == 0 else quiet_head, mit)
        loss.backward()
        optimizer_update(model, opt, mit, monitor, i, loss.detach(), 1.0, compile=True)

    return cfg, step


def time_steps(step, warmup: int, steps: int, barrier: tuple[Path, int, int] | None = None) -> list[float]:
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    if barrier:  # every process compiled and warm: start timing together
        folder, rank, world = barrier
        (folder / f"ready.{rank}").touch()
        while len(list(folder.glob("ready.*"))) < world:
            time.sleep(0.05)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for i in range(steps):
        step(warmup + i)
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]


def time_ms(fn, warmup: int, steps: int) -> float:
    """Median milliseconds of fn(), timed as a training step is (the kernel micro-benchmarks)."""
    return 1e3 * statistics.median(time_steps(lambda _: fn(), warmup, steps))


def bench(scale: str, method: str, micro: int, head_kind: str, warmup: int, steps: int, peak: float,
          barrier=None) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg, step = build_step(scale, method, micro, head_kind)
    times = time_steps(step, warmup, steps, barrier)
    T = cfg.batch.seq_len
    sec = statistics.median(times)
    tps = micro * T / sec
    return {"scale": scale, "method": method, "head": head_kind, "micro_batch": micro, "ms_per_step": round(sec * 1e3, 2),
            "tokens_per_s": round(tps), "mfu_pct": round(100 * tps * flops_per_token(cfg.gpt_config(), T) / (peak * 1e12), 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


# ----------------------------------------------------------------------------- profile
CATEGORIES = (("matmul", ("gemm", "cutlass", "nvjet", "sm90_xmma", "cublas")), ("attention", ("flash", "fmha", "attention")),
              ("optimizer", ("adam", "foreach", "multi_tensor")), ("loss head row kernel (Triton)", ("head_rows",)),
              ("fused elementwise/reductions (inductor)", ("triton",)))


def profile(scale: str, method: str, micro: int, head_kind: str, out: Path) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cfg, step = build_step(scale, method, micro, head_kind)
    for i in range(6):
        step(i)
    torch.cuda.synchronize()
    n = 3
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(10 + i)
        torch.cuda.synchronize()
    kernels = [(e.key, e.device_time_total / n / 1e3, e.count // n) for e in prof.key_averages() if e.device_time_total > 0]
    kernels = [k for k in kernels if not k[0].startswith(("cudaLaunch", "Memcpy", "Memset")) or k[1] > 0]
    total = sum(k[1] for k in kernels)
    by_cat: dict[str, float] = {}
    for name, ms, _ in kernels:
        cat = next((c for c, keys in CATEGORIES if any(s in name.lower() for s in keys)), "other")
        by_cat[cat] = by_cat.get(cat, 0.0) + ms
    lines = [f"# Where the time goes: {scale} {method}, {head_kind} head, micro-batch {micro} x 2048\n",
             f"GPU kernel time per step: {total:.2f} ms (torch.profiler, mean of {n} steps)\n",
             "| category | ms / step | share |", "|---|---|---|"]
    lines += [f"| {c} | {ms:.2f} | {100 * ms / total:.1f}% |" for c, ms in sorted(by_cat.items(), key=lambda kv: -kv[1])]
    lines += ["", "| kernel | calls / step | ms / step | share |", "|---|---|---|---|"]
    for name, ms, calls in sorted(kernels, key=lambda k: -k[1])[:25]:
        lines.append(f"| `{name[:110]}` | {calls} | {ms:.3f} | {100 * ms / total:.1f}% |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{scale}_{method}_{head_kind}.md").write_text(text)
    print(text, flush=True)


# ----------------------------------------------------------------------------- concurrency
def concurrent(n: int, scale: str, method: str, micro: int, args, peak: float) -> dict:
    """n processes, each timing the same step after all have compiled; their summed tokens/s."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", tmp, "--scales", scale, "--methods", method,
               "--micro-batch", str(micro), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--peak-tflops", str(peak)]
        procs = [subprocess.Popen(cmd + ["--rank", str(r), "--world", str(n)]) for r in range(n)]
        if any(p.wait() for p in procs):
            raise SystemExit(f"a concurrent worker failed ({n} processes)")
        rows = [json.loads((Path(tmp) / f"result.{r}.json").read_text()) for r in range(n)]
    total = sum(r["tokens_per_s"] for r in rows)
    return {"scale": scale, "method": method, "head": "chunked", "micro_batch": micro, "processes": n,
            "mps": bool(args.mps), "ms_per_step": round(statistics.mean(r["ms_per_step"] for r in rows), 2),
            "tokens_per_s": round(total), "mfu_pct": round(sum(r["mfu_pct"] for r in rows), 1),
            "peak_mem_gib": round(sum(r["peak_mem_gib"] for r in rows), 2)}


class Mps:
    """CUDA MPS for the concurrent measurement: lets kernels of several processes share the SMs."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            self.dir = tempfile.mkdtemp(prefix="mps")
            os.environ["CUDA_MPS_PIPE_DIRECTORY"] = self.dir
            os.environ["CUDA_MPS_LOG_DIRECTORY"] = self.dir
            subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)


# ----------------------------------------------------------------------------- main
def table_header(what: str) -> str:
    """The first lines of every benchmark table: the GPU, torch, date, what was timed, and the
    command that made it (the script's name and its arguments as given)."""
    return (f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, {datetime.date.today()}; {what}\n\n"
            f"Command: python scripts/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}\n\n")


def micro_benchmark_parser(doc: str, stem: str) -> argparse.ArgumentParser:
    """The arguments every kernel micro-benchmark takes: its timing, and where its table goes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    p.add_argument("--stem", default=stem)
    return p


def write_table(rows: list[dict], out: Path, stem: str, head: str) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
        "| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(head + table)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print(head + table, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=["16M", "29M", "57M", "109M", "221M"])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--head", nargs="+", default=["chunked"], choices=["chunked", "chunked-inductor", "naive"],
                   help="chunked: the training head (Triton row kernel); chunked-inductor: the same with inductor's "
                        "fusion of the row math; naive: whole-batch logits")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[0], help="0: the scale's largest micro-batch")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--peak-tflops", type=float, default=786.0,
                   help="MFU denominator; 786 was measured on the lent H100 (PERFORMANCE.md); 0: measure it here")
    p.add_argument("--profile", action="store_true", help="also write where the GPU time of each step goes")
    p.add_argument("--concurrent", type=int, nargs="+", default=[], help="process counts for the runs-at-once measurement")
    p.add_argument("--mps", action="store_true", help="run the concurrent processes under CUDA MPS")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    p.add_argument("--stem", default="benchmark", help="file name of the table (without extension)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = args.peak_tflops or measure_peak_tflops()
    micro_of = lambda s, m: m or get_scale(s).max_micro_batch  # noqa: E731

    if args.worker:  # one process of a --concurrent measurement
        s, m = args.scales[0], args.methods[0]
        row = bench(s, m, micro_of(s, args.micro_batch[0]), "chunked", args.warmup, args.steps, peak,
                    barrier=(args.worker, args.rank, args.world))
        (args.worker / f"result.{args.rank}.json").write_text(json.dumps(row))
        return

    head = table_header(f"seq 2048, bf16 autocast, torch.compile, one micro-batch per step, median of {args.steps} steps "
                        f"after {args.warmup} warm-up; MFU vs {peak:.0f} TFLOP/s "
                        f"({'given' if args.peak_tflops else 'measured: bf16 8192^3 matmul'})")
    rows = []
    if args.concurrent:
        with Mps(args.mps):
            for s in args.scales:
                for m in args.methods:
                    for mb in args.micro_batch:
                        for n in args.concurrent:
                            rows.append(concurrent(n, s, m, micro_of(s, mb), args, peak))
                            print(rows[-1], flush=True)
        write_table(rows, args.out, args.stem, head)
        return
    for s in args.scales:
        for mb in args.micro_batch:
            for m in args.methods:
                for h in args.head:
                    try:
                        rows.append(bench(s, m, micro_of(s, mb), h, args.warmup, args.steps, peak))
                    except torch.OutOfMemoryError:
                        rows.append({"scale": s, "method": m, "head": h, "micro_batch": micro_of(s, mb), "ms_per_step": "OOM"})
                    print(rows[-1], flush=True)
                    if args.profile and rows[-1].get("ms_per_step") != "OOM":
                        profile(s, m, micro_of(s, mb), h, args.out)
    write_table(rows, args.out, args.stem, head)


if __name__ == "__main__":
    main()
