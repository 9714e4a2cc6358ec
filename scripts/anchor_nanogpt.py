"""The speed anchor of issue 4, measurable on whatever GPU is lent: nanoGPT's architecture and
its bench.py procedure at our five shapes, written here (not karpathy/nanoGPT's code).

    python scripts/anchor_nanogpt.py --scales 16M 29M 57M 109M 221M --out results/benchmarks

PERFORMANCE.md's anchor figures were measured on an H100 with karpathy/nanoGPT's own bench.py.
When the lent GPU is another kind, our tokens/s can only be compared with an anchor measured on
that GPU. This is that anchor, as nanoGPT defines it: GPT-2 blocks (LayerNorm without bias,
one fused qkv projection, flash attention through F.scaled_dot_product_attention, a 4·d GELU
MLP, no biases), learned positions, the LM head tied to the token embedding, V = 50304,
whole-batch logits and F.cross_entropy, torch.compile of the model, bf16 autocast, fused AdamW
(weight decay on matrices only), and bench.py's loop: 10 burn-in steps, then 20 timed steps
with one loss.item() each, mean time per step. Shapes and micro-batches are PERFORMANCE.md's
table (n_layer × d, 4 heads). Its H100 row at 16M (35.6 ms) is the check that this is the
same program: run it on an H100 and compare.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nanoGPT.model import get_scale  # noqa: E402
from scripts.benchmark import table_header, write_table  # noqa: E402

ANCHOR_MICRO_BATCH = {"16M": 32, "29M": 32, "57M": 16, "109M": 16, "221M": 8}  # PERFORMANCE.md's table
V, T = 50304, 2048


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, L, d = x.shape
        q, k, v = (t.view(B, L, self.n_head, d // self.n_head).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(d, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, d)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class AnchorGPT(nn.Module):
    def __init__(self, n_layer: int, d: int, n_head: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "fc_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def measure(scale: str, micro: int) -> dict:
    s = get_scale(scale)
    torch.manual_seed(1337)
    model = AnchorGPT(s.n_layer, s.d_model, s.n_head).cuda()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 1e-2},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    step_model = torch.compile(model)
    x = torch.randint(50257, (micro, T), device="cuda")
    y = torch.randint(50257, (micro, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    for n in (10, 20):  # burn-in, then timed, as bench.py
        t0 = time.time()
        for _ in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        torch.cuda.synchronize()
        sec = (time.time() - t0) / n
    n_params = sum(p.numel() for p in params) - model.wpe.weight.numel()  # nanoGPT's count for its MFU
    return {"scale": scale, "micro_batch": micro, "params_m": round(n_params / 1e6, 1), "ms_per_step": round(sec * 1e3, 2),
            "tokens_per_s": round(micro * T / sec), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=list(ANCHOR_MICRO_BATCH))
    p.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    p.add_argument("--stem", default="anchor_nanogpt")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    for s in args.scales:
        rows.append(measure(s, ANCHOR_MICRO_BATCH[s]))
        print(rows[-1], flush=True)
    head = table_header("nanoGPT's architecture and bench.py loop (scripts/anchor_nanogpt.py)")
    write_table(rows, args.out, args.stem, head)


if __name__ == "__main__":
    main()
