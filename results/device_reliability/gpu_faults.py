"""On the GPU: (1) same config twice -> same loss curve? (2) kill + resume -> same result? per numerics mode;
(3) the per-step cost of the divergence monitor (real / none / real + a .item() sync every step)."""
import contextlib, io, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (nanoGPT)
import numpy as np
import torch
from nanoGPT.config import config_from_dict
from nanoGPT.data import write_shard
import nanoGPT.train as T
from nanoGPT.checkpoint import read_log, load_checkpoint

root = Path("/tmp/gx"); root.mkdir(exist_ok=True)
if not (root / "x_train_000001.bin").exists():
    rng = np.random.default_rng(0)
    toks = (rng.zipf(1.3, size=30_000_000) % 50257).astype(np.uint16)
    write_shard(root / "x_train_000001.bin", toks)
    write_shard(root / "x_val_000000.bin", toks[:1_000_000])

def cfg(name, scale="tiny", steps=40, B=16, T_=256, log=1, ckpt=20, dtype="auto", compile="auto", lr=3e-3):
    return config_from_dict({"name": name, "out_dir": str(root / "out"), "model": {"scale": scale},
        "batch": {"batch_size": B, "seq_len": T_}, "schedule": {"max_steps": steps, "warmup_steps": 5, "min_lr": 1e-5},
        "optim": {"lr": lr}, "data": {"train": str(root / "x_train_*.bin"), "val": str(root / "x_val_*.bin")},
        "log": {"log_interval": log, "checkpoint_interval": ckpt}, "system": {"device": "cuda", "dtype": dtype, "compile": compile}})

def quiet(f, *a):
    with contextlib.redirect_stdout(io.StringIO()):
        return f(*a)

def curve(c):
    return [(r["loss"], r["grad_norm"]) for r in read_log(c.run_dir / "log.jsonl")]

def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)

def determinism(mode):
    dtype, comp = {"bf16-compile": ("auto", "auto"), "fp32-eager": ("float32", "off"), "bf16-eager": ("auto", "off"),
                   "fp32-compile": ("float32", "on"), "bf16-compile-det": ("auto", "auto"), "bf16-eager-det": ("auto", "off")}[mode]
    torch.use_deterministic_algorithms(mode.endswith("-det"))
    runs = [cfg(f"{mode}-{i}", dtype=dtype, compile=comp) for i in range(3)]
    import shutil
    for c in runs:
        shutil.rmtree(c.run_dir, ignore_errors=True)
    quiet(T.train, runs[0]); quiet(T.train, runs[1])
    real = T.lr_at
    def crash(step, c):
        if step == 30: raise KeyboardInterrupt
        return real(step, c)
    T.lr_at = crash
    try: quiet(T.train, runs[2])
    except KeyboardInterrupt: pass
    T.lr_at = real
    quiet(T.train, runs[2])
    a, b, r = (curve(c) for c in runs)
    wa, wb, wr = (load_checkpoint(c.run_dir / "ckpt.pt")["model"] for c in runs)
    same_w = lambda x, y: all(torch.equal(x[k], y[k]) for k in x)
    print(json.dumps({"mode": mode, "steps": len(a), "repeat_first_diff_step": first_diff(a, b), "repeat_same_weights": same_w(wa, wb),
                      "resume_first_diff_step": first_diff(a, r), "resume_same_weights": same_w(wa, wr),
                      "loss_first_last": [a[0][0], a[-1][0]], "max_abs_loss_diff_repeat": max(abs(x[0] - y[0]) for x, y in zip(a, b))}), flush=True)

def overhead(repeats=2):
    real = T.DivergenceMonitor.update
    def synced(self, step, loss, g):
        real(self, step, loss, g); self.at_step.item()
    variants = {"monitor": real, "none": lambda self, step, loss, g: None, "monitor+item": synced}
    res = {k: [] for k in variants}
    for rep in range(repeats):
        for name, fn in variants.items():
            T.DivergenceMonitor.update = fn
            c = cfg(f"speed-{name}-{rep}", scale="16M", steps=160, B=64, T_=2048, log=40, ckpt=100000)
            import shutil; shutil.rmtree(c.run_dir, ignore_errors=True)
            quiet(T.train, c)
            log = read_log(c.run_dir / "log.jsonl")
            res[name] += [r["tokens_per_s"] for r in log[2:]]  # windows of 40 steps after compilation
    T.DivergenceMonitor.update = real
    print(json.dumps({"16M tokens/s per 40-step window": res, "median": {k: sorted(v)[len(v) // 2] for k, v in res.items()}}), flush=True)

if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    for arg in sys.argv[1:]:
        overhead() if arg == "overhead" else determinism(arg)
