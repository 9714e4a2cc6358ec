"""Train one run from its config file.

    python -m nanoGPT.train configs/runs/tiny_cpu/<name>.toml [key=value ...]
    torchrun --standalone --nproc_per_node=4 -m nanoGPT.train <config> [key=value ...]

The run writes into ``out_dir/name``: ``config.toml`` (the resolved config), ``log.jsonl``
(one line per log step), ``ckpt.pt`` (+ ``.sha256``; the previous one kept as
``ckpt.prev.pt``) and ``status.json``; ``train.lock`` says which process holds the directory.
Started again with the same command, a killed run resumes from its last checkpoint, bit for
bit on CPU; a finished run does nothing. Divergence (a NaN/Inf loss or gradient norm, or a
loss spike beyond ``log.spike_factor``) is a result, not a crash: the run stops, records
``diverged`` with the step and the last finite loss, and exits 0. SIGTERM or SIGUSR1 (slurm
preempting the job, its time limit near) makes the run checkpoint at its next log step, record
``preempted`` and exit with EXIT_PREEMPTED; the same command resumes it. Bad input (config,
data, a run directory in use or not writable, a full disk) ends with one line naming the cause.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import (CheckpointError, RunDirError, atomic_write, describe_os_error, hold_run_dir, load_checkpoint,
                         read_log_checked, read_status, save_checkpoint, write_json)
from .config import ConfigError, RunConfig, config_from_dict, load_config, load_toml
from .data import BatchLoader, DataError, resolve_shards
from .fused_head import LossHead
from .mitigations import output_mean
from .model import GPT, get_scale, micro_batch_cap
from .preemption import Preemption
from .tracking import Tracker

CKPT, PREV_CKPT = "ckpt.pt", "ckpt.prev.pt"
EXIT_PREEMPTED = 3  # stopped with a checkpoint on SIGTERM/SIGUSR1: not finished, the same command resumes it


# ----------------------------------------------------------------------------- setup
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; without them this is a single process."""
    if "RANK" not in os.environ:
        return Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device_kind == "cuda":
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return d


def tune_cpu_allocator() -> None:
    """Keep freed memory in the process instead of returning it to the OS at every free.

    The [tokens, 50304] logits and their gradients are re-allocated every step; glibc's
    default hands such large blocks back with munmap, and re-faulting the pages made a CPU
    step ~8x slower (2.5 s vs 0.3 s for the tiny scale at 8 x 128 tokens on 2 cores)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    libc.mallopt(-1, ctypes.c_int(1 << 30))  # M_TRIM_THRESHOLD
    libc.mallopt(-3, ctypes.c_int(1 << 30))  # M_MMAP_THRESHOLD


def resolve_device(cfg: RunConfig) -> tuple[str, torch.dtype, bool]:
    kind = cfg.system.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'system.device': 'cuda' requested but no GPU is visible")
    dtype = {"auto": torch.bfloat16 if kind == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.system.dtype]
    compile_ = cfg.system.compile == "on" or (cfg.system.compile == "auto" and kind == "cuda")
    return kind, dtype, compile_


def micro_batch_size(cfg: RunConfig, world_size: int, gpu_memory_gib: float | None = None) -> tuple[int, int]:
    """(micro-batch, accumulation steps): the largest divisor of the per-GPU batch not above
    the scale's largest micro-batch that fits the GPU, unless the config fixes the micro-batch."""
    B = cfg.batch.batch_size
    if B % world_size:
        raise ConfigError(f"config key 'batch.batch_size': {B} sequences cannot be split over {world_size} processes")
    per_rank = B // world_size
    micro = cfg.batch.micro_batch_size
    if micro:
        if per_rank % micro:
            raise ConfigError(f"config key 'batch.micro_batch_size': {micro} does not divide the per-process batch {per_rank}")
    else:
        cap = micro_batch_cap(get_scale(cfg.model.scale), gpu_memory_gib)
        micro = max(m for m in range(1, min(per_rank, cap) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay reaching min_lr at the last step."""
    lr, s = cfg.optim.lr, cfg.schedule
    if step < s.warmup_steps:
        return lr * (step + 1) / s.warmup_steps
    span = max(1, s.max_steps - 1 - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr + 0.5 * (lr - s.min_lr) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: GPT, cfg: RunConfig, device_kind: str, compile: bool = False) -> torch.optim.Optimizer:
    """AdamW; matrices and embeddings decay, LayerNorm gains do not. With independent weight
    decay AdamW gets wd/lr, so each step decays by wd·(lr_t/lr), independent of the peak lr."""
    o = cfg.optim
    wd = o.weight_decay / o.lr if o.independent_weight_decay else o.weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device_kind == "cuda")
    return cfg.mitigation.wrap_optimizer(opt, model.named_parameters(), cfg.method.orthograd_skip, compile=compile)


# ----------------------------------------------------------------------------- run directory
_RESULT_SECTIONS = ("seed", "model", "method", "optim", "schedule", "batch")


def check_run_dir(cfg: RunConfig) -> None:
    """Refuse a run directory that holds a run of another config (reads only)."""
    saved = cfg.run_dir / "config.toml"
    if saved.exists():
        old = config_from_dict(load_toml(saved)).to_dict()
        new = cfg.to_dict()
        # the data a step reads: which shards, in which order (a resumed run must see the same batches)
        changed = [k for k in _RESULT_SECTIONS if old[k] != new[k]] + [
            f"data.{k}" for k in ("train", "shard_seed") if old["data"].get(k) != new["data"].get(k)]
        if changed:
            raise ConfigError(f"run directory {cfg.run_dir} holds a run with a different config ({', '.join(changed)} differ); "
                              f"give the run another name or out_dir, or delete {cfg.run_dir} to start over")


def find_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest intact checkpoint: ckpt.pt, or ckpt.prev.pt if the newest is damaged or
    missing (a crash while a new one was written); None if there is none at all."""
    problems = []
    for name in (CKPT, PREV_CKPT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: {e}", file=sys.stderr)
            problems.append(str(e))
    if problems:  # training from scratch would silently throw the run's progress away
        raise CheckpointError(f"no intact checkpoint in {run_dir} ({'; '.join(problems)}); "
                              f"delete the ckpt* files there to train the run from the start")
    return None


def truncate_log(path: Path, before_step: int) -> None:
    """Drop log lines of steps the resumed run will redo (and a line the kill cut short), so
    the log reads as one run."""
    if path.exists():
        records, damage = read_log_checked(path)
        if damage:
            print(f"warning: {damage}; it and the lines after it are dropped", file=sys.stderr)
        keep = [r for r in records if r["step"] < before_step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def append_line(log_file, record: dict) -> None:
    try:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
    except OSError as e:  # a buffered write names no file; the message should
        raise OSError(e.errno, e.strerror, log_file.name) from None


# ----------------------------------------------------------------------------- divergence
class DivergenceMonitor:
    """Finds the first diverged step on the device, so that no step waits for the host.

    A step diverges when its loss or gradient norm is not finite, or (spike_factor > 0) when
    its loss exceeds spike_factor × the moving average of the losses before it. The verdict
    stays on the device; the loop reads it at the next log step, which syncs anyway, and stops
    there, before any checkpoint: every checkpoint step is a log step, so none holds diverged
    weights. The cost per step is a dozen scalar kernels, queued without a sync.
    """

    EMA_DECAY = 0.99  # the spike reference averages the last ~100 steps

    def __init__(self, spike_factor: float, device: torch.device):
        self.spike_factor = spike_factor
        self.at_step = torch.full((), -1, dtype=torch.long, device=device)  # first diverged step; -1: none
        self.last_loss = torch.full((), math.nan, device=device)  # loss of the last step before it
        self.loss_ema = torch.full((), math.inf, device=device)   # inf before the first step: no spike yet

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = ~(loss.isfinite() & grad_norm.isfinite())
        if self.spike_factor:
            bad |= loss > self.spike_factor * self.loss_ema
        self.at_step = torch.where(bad & (self.at_step < 0), step, self.at_step)
        ok = self.at_step < 0
        self.last_loss = torch.where(ok, loss.float(), self.last_loss)
        if self.spike_factor:
            ema = torch.where(self.loss_ema.isinf(), loss.float(), self.loss_ema.lerp(loss.float(), 1 - self.EMA_DECAY))
            self.loss_ema = torch.where(ok, ema, self.loss_ema)

    def diverged(self) -> bool:
        return self.at_step.item() >= 0

    def result(self) -> tuple[int | None, float | None]:
        """(first diverged step, loss of the last step before it), None where there is none."""
        at, last = self.at_step.item(), self.last_loss.item()
        return (at if at >= 0 else None), (last if math.isfinite(last) else None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"last_loss": self.last_loss, "loss_ema": self.loss_ema}  # at_step is -1 at every checkpoint

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.last_loss.copy_(state["last_loss"])
        self.loss_ema.copy_(state["loss_ema"])


# ----------------------------------------------------------------------------- the loop
@torch.no_grad()
def diagnostics(model: GPT, head_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Output-logit divergence diagnostics of the published runs (tensors; read at log steps):
    the mean output and input embeddings' norms, and the logit statistics of the last
    micro-batch, which the loss head gathers in its pass over the logits."""
    return {"mu_out_norm": output_mean(model.output_embedding).norm(), "mu_in_norm": output_mean(model.wte.weight).norm(),
            **{k: head_out[k].detach() for k in ("logit_mean", "logit_std", "logit_max", "lse_sq_mean")}}


def forward_loss(ddp, model: GPT, x: torch.Tensor, y: torch.Tensor, head: LossHead, mitigation) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The objective of one micro-batch: the loss head's loss (+ mu-loss's penalty on E), the
    regulariser alone (detached), and the head's output with its logit diagnostics."""
    out = ddp(x, y, loss_head=head)
    loss, aux = out["loss"], out["aux"]
    penalty = mitigation.embedding_penalty(model.output_embedding)
    if penalty is not None:
        loss, aux = loss + penalty, aux + penalty.detach()
    return loss, aux, out


def is_checkpoint_step(step: int, cfg: RunConfig) -> bool:
    """Whether a checkpoint follows the step: every checkpoint_interval steps, and the last."""
    return (step + 1) % cfg.log.checkpoint_interval == 0 or step == cfg.schedule.max_steps - 1


def is_log_step(step: int, cfg: RunConfig) -> bool:
    """Whether a step's metrics are read: every log_interval-th step and each checkpoint's (the
    divergence verdict is read before any checkpoint). Known before the step runs, so the other
    steps can use a loss head without diagnostics."""
    return step % cfg.log.log_interval == 0 or is_checkpoint_step(step, cfg)


def optimizer_update(model: GPT, optimizer: torch.optim.Optimizer, mitigation, monitor: DivergenceMonitor, step: int,
                     loss: torch.Tensor, clip: float, compile: bool, world_size: int = 1) -> torch.Tensor:
    """What follows a step's backward passes: clip the gradients, judge divergence, step the
    optimizer (⊥Grad inside it), mu-center, clear the gradients. Returns the unclipped norm;
    with several ranks, ``loss`` is averaged over them in place."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if world_size > 1:  # every rank must judge the same loss, or they would stop at different steps and hang
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    monitor.update(step, loss, grad_norm)
    optimizer.step()
    mitigation.after_step(model.output_embedding, compile=compile)
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train(cfg: RunConfig) -> str:
    """Train (or resume, or skip if finished) one run; returns the final state."""
    device_kind, dtype, use_compile = resolve_device(cfg)
    if device_kind == "cpu":
        tune_cpu_allocator()
    dd = init_distributed(device_kind)
    device = torch.device(f"cuda:{dd.local_rank}" if device_kind == "cuda" else "cpu")
    try:
        check_run_dir(cfg)
        state = read_status(cfg.run_dir)["state"]
        if state in ("finished", "diverged"):
            if dd.master:
                print(f"{cfg.name}: already {state}, nothing to do")
            return state
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
        micro, accum = micro_batch_size(cfg, dd.world_size, memory)
        # Bad data stops the run here, before its directory is created or touched.
        loader = BatchLoader(resolve_shards(cfg.data.train, cfg.data.shard_seed), micro, cfg.batch.seq_len, dd.rank,
                             dd.world_size, vocab_size=cfg.model.vocab_size, device=device)
        # Only rank 0 writes, so only rank 0 locks; if it cannot, it exits and torchrun stops the others.
        with hold_run_dir(cfg.run_dir) if dd.master else contextlib.nullcontext(), Preemption() as preemption:
            return _train(cfg, dd, device, dtype, use_compile, loader, accum, preemption)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: RunConfig, dd: Dist, device: torch.device, dtype: torch.dtype, use_compile: bool,
           loader: BatchLoader, accum: int, preemption: Preemption) -> str:
    run_dir, status_path, log_path = cfg.run_dir, cfg.run_dir / "status.json", cfg.run_dir / "log.jsonl"
    if dd.master:
        atomic_write(run_dir / "config.toml", cfg.dumps().encode())
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = GPT(cfg.gpt_config()).to(device)
    optimizer = build_optimizer(model, cfg, device.type, compile=use_compile)
    mitigation = cfg.mitigation
    monitor = DivergenceMonitor(cfg.log.spike_factor, device)

    start_step, train_time = 0, 0.0
    found = find_checkpoint(run_dir)
    if found is not None:
        path, ckpt = found
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if "monitor" in ckpt:  # checkpoints written before divergence monitoring have none
            monitor.load_state_dict(ckpt["monitor"])
        start_step, train_time = ckpt["step"], ckpt["train_time"]
        if dd.master:
            print(f"{cfg.name}: resuming at step {start_step} from {path}")
    if dd.master:
        truncate_log(log_path, start_step)
        write_json(status_path, {"state": "running", "step": start_step, "world_size": dd.world_size})

    fwd = torch.compile(model) if use_compile else model
    ddp = DDP(fwd, device_ids=[dd.local_rank] if device.type == "cuda" else None) if dd.world_size > 1 else fwd
    head = LossHead.for_mitigation(mitigation, compiled=use_compile, float32_logits=cfg.model.float32_logits)
    quiet_head = replace(head, diagnostics=False)  # between log steps: nothing reads them
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    tokens_per_step = cfg.batch.batch_size * cfg.batch.seq_len
    s = cfg.schedule
    if dd.master:
        print(f"{cfg.name}: {sum(p.numel() for p in model.parameters()):,} parameters, {device}, {dtype}, compile={use_compile}, "
              f"micro-batch {loader.batch_size} x {accum} accumulation x {dd.world_size} processes")

    log_file = open(log_path, "a") if dd.master else None
    tracker = Tracker(cfg, enabled=dd.master and cfg.log.wandb)
    t_last, steps_since_log = time.perf_counter(), 0
    state, step, stop = "finished", start_step - 1, False
    for step in range(start_step, s.max_steps):
        lr = lr_at(step, cfg)
        log_step = is_log_step(step, cfg)
        step_head = head if log_step else quiet_head
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        parts = {"ce": torch.zeros((), device=device), "aux": torch.zeros((), device=device)}
        for micro_step in range(accum):
            x, y = loader.get(step * accum + micro_step)
            sync = micro_step == accum - 1 or dd.world_size == 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast:
                loss, aux, out = forward_loss(ddp, model, x, y, step_head, mitigation)
            (loss / accum).backward()
            loss_sum += loss.detach() / accum
            parts["ce"] += out["ce"] / accum
            parts["aux"] += aux / accum
        grad_norm = optimizer_update(model, optimizer, mitigation, monitor, step, loss_sum, clip, use_compile, dd.world_size)
        steps_since_log += 1

        last = step == s.max_steps - 1
        checkpoint_due = is_checkpoint_step(step, cfg)
        if log_step:
            stop = preemption.requested(dd.world_size, device)  # a collective: at log steps, on every rank
            checkpoint_due = checkpoint_due or stop
            # The host-device syncs of a log step: the metrics, then the divergence verdict.
            metrics = {**parts, "grad_norm": grad_norm, **diagnostics(model, out)}
            if dd.world_size > 1:
                for v in metrics.values():
                    dist.all_reduce(v, op=dist.ReduceOp.AVG)
            now = time.perf_counter()
            train_time += now - t_last
            record = {"step": step, "lr": lr, "loss": loss_sum.item(), **{k: v.item() for k, v in metrics.items()},
                      "tokens_per_s": steps_since_log * tokens_per_step / (now - t_last), "train_time": train_time}
            t_last, steps_since_log = now, 0
            if dd.master:
                append_line(log_file, record)
                tracker.log(record)
                print(f"step {step:>6} | loss {record['loss']:.4f} | ce {record['ce']:.4f} | lr {lr:.2e} | "
                      f"|g| {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s", flush=True)
            if monitor.diverged():
                state = "diverged"
                break
        if checkpoint_due:
            now = time.perf_counter()
            train_time += now - t_last
            t_last = now
            if dd.master:
                save_checkpoint(run_dir / CKPT, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                    "train_time": train_time, "rng_cpu": torch.get_rng_state(), "monitor": monitor.state_dict(),
                    "config": cfg.to_dict()}, previous=run_dir / PREV_CKPT)
                write_json(status_path, {"state": "running", "step": step + 1, "world_size": dd.world_size})
            if dd.world_size > 1:
                dist.barrier()
        if stop and not last:
            if dd.master:
                print(f"{cfg.name}: preempted: checkpoint written at step {step + 1}, stopping (the same command resumes)", flush=True)
            state = "preempted"
            break

    if log_file:
        log_file.close()
    tracker.finish(state)

    diverged_at, last_finite_loss = monitor.result()
    if dd.master:
        final = {"state": state, "step": step + 1, "train_time": train_time, "tokens": (step + 1) * tokens_per_step,
                 "world_size": dd.world_size, "last_finite_loss": last_finite_loss}
        if state == "diverged":
            final["diverged_at_step"] = diverged_at
        write_json(status_path, final)
        print(f"{cfg.name}: {state} after {step + 1} steps, {train_time:.1f} s"
              + (f" (diverged at step {diverged_at}, last finite loss {last_finite_loss})" if state == "diverged" else ""))
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="run config (TOML); defaults apply to what it leaves out")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-3")
    args = p.parse_args(argv)
    config, overrides = args.config, args.overrides
    if config and "=" in config and not config.endswith(".toml"):
        config, overrides = None, [config, *overrides]
    try:
        state = train(load_config(config, overrides))
    except (ConfigError, DataError, CheckpointError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: a full disk, no permission
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    return EXIT_PREEMPTED if state == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
