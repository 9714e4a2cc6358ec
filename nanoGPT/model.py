"""The GPT of the output-embedding-centering experiments, in one file.

Pre-norm decoder: x + Attn(LN(x)), x + MLP(LN(x)), final LN, untied LM head by default.
LayerNorm gains without biases, no biases anywhere. Attention is causal with per-head
qk-LayerNorm applied to q and k *before* RoPE, RoPE on the first half of each head's
dimensions (the published code used rotary-embedding-torch with dim = head_dim // 2, which
rotates interleaved pairs), fused (flash) attention through F.scaled_dot_product_attention,
which picks cuDNN's kernel on Hopper GPUs, the fastest at our head dims
(scripts/benchmark_attention.py).
SwiGLU MLP with hidden size 256·ceil((2·4d/3)/256), parameter-matched to a 4d GELU MLP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Scale:
    name: str      # the papers' label
    letter: str    # the digit/letter in run names (wor{letter}0{method}-...)
    n_layer: int
    d_model: int
    n_head: int
    max_micro_batch: int  # largest micro-batch of 2048-token sequences used on an 80 GB GPU
    peak_gib: float       # peak GPU memory of a training step at that micro-batch, measured


# Porian et al. shapes, 4 heads at every scale. max_micro_batch is twice the nanoGPT anchor's
# micro-batch of PERFORMANCE.md (at 16M: 64, the published global batch): the chunked loss
# head freed the memory, and the doubled micro-batch ran 2.3-4.9% more tokens/s at 29M-221M
# on an H200 (results/benchmarks/README.md, session 14). peak_gib was measured with
# scripts/benchmark.py (bf16, compiled, chunked head with inductor's row math; the Triton row
# kernel needs 0.77 GiB less, so these bound both) and lets smaller GPUs halve the micro-batch
# until it fits.
SCALES: dict[str, Scale] = {s.name: s for s in (
    Scale("tiny", "T", 2, 64, 4, 64, 0.0),   # tests and the CPU default grid only
    Scale("16M", "4", 6, 224, 4, 64, 10.72),
    Scale("29M", "6", 9, 320, 4, 64, 19.37),
    Scale("57M", "8", 12, 480, 4, 32, 18.61),
    Scale("109M", "A", 15, 640, 4, 32, 29.84),
    Scale("221M", "C", 21, 832, 4, 16, 28.94),
)}


def micro_batch_cap(scale: Scale, gpu_memory_gib: float | None = None) -> int:
    """The scale's largest micro-batch, halved while its measured peak (taken as proportional
    to the micro-batch, which overestimates) would exceed 90% of the GPU's memory."""
    cap = scale.max_micro_batch
    if gpu_memory_gib is not None:
        while cap > 1 and scale.peak_gib * cap / scale.max_micro_batch > 0.9 * gpu_memory_gib:
            cap //= 2
    return cap


def get_scale(key: str) -> Scale:
    """A scale by name ('16M') or run-name letter ('4')."""
    for s in SCALES.values():
        if key in (s.name, s.letter):
            return s
    raise KeyError(f"unknown scale {key!r}; known: " + ", ".join(f"{s.name} ({s.letter})" for s in SCALES.values()))


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    d_model: int
    n_head: int
    vocab_size: int = 50304      # GPT-2's 50257 padded to a multiple of 64
    block_size: int = 2048
    tie_weights: bool = False
    xavier_init: bool = True
    rope_theta: float = 10000.0

    @classmethod
    def from_scale(cls, scale: str, **kw) -> "GPTConfig":
        s = get_scale(scale)
        return cls(n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head, **kw)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return 256 * math.ceil((2 * 4 * self.d_model / 3) / 256)


class Rotary(nn.Module):
    """RoPE on the first ``dim`` features of each head, rotating interleaved pairs (x0,x1),(x2,x3),..."""

    def __init__(self, dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [T, dim/2]
        self.dim = dim
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, T, head_dim]
        T = x.size(-2)
        rot, rest = x[..., : self.dim], x[..., self.dim:]
        x1, x2 = rot.float().unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = self.cos[:T], self.sin[:T]
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return torch.cat((rotated.type_as(x), rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.proj.is_residual_output = True
        self.q_norm = nn.LayerNorm(cfg.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(cfg.head_dim, bias=False)
        self.rotary = Rotary(cfg.head_dim // 2, cfg.block_size, cfg.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(self.q_norm(q)), self.rotary(self.k_norm(k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)
        self.down.is_residual_output = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            if getattr(m, "is_residual_output", False):
                nn.init.normal_(m.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
            elif m is self.lm_head and self.cfg.tie_weights:
                pass  # the shared matrix is initialised as the input embedding
            elif self.cfg.xavier_init:
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            std = 1 / math.sqrt(self.cfg.d_model) if self.cfg.xavier_init else 0.02
            nn.init.normal_(m.weight, std=std)

    @property
    def output_embedding(self) -> torch.Tensor:
        """E, the [V, d] LM head weight whose mean row μ the mitigations act on."""
        return self.lm_head.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.size(1) > self.cfg.block_size:
            raise ValueError(f"sequence length {idx.size(1)} exceeds the model's block_size {self.cfg.block_size}")
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_head=None):
        """Logits [B, T, V]; or, given targets and a loss head (nanoGPT.fused_head.LossHead),
        its dict of loss and diagnostics, computed in chunks without whole-batch logits."""
        h = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(h)
        return loss_head(h, self.lm_head.weight, targets)


def count_parameters(cfg: GPTConfig) -> dict[str, int]:
    """Exact parameter counts without building the model: total and non-embedding
    (everything but the input embedding and the LM head; RoPE has no parameters)."""
    d, L = cfg.d_model, cfg.n_layer
    per_block = 2 * d + 4 * d * d + 2 * cfg.head_dim + 3 * d * cfg.mlp_hidden
    non_embedding = L * per_block + d
    embedding = cfg.vocab_size * d * (1 if cfg.tie_weights else 2)
    return {"total": non_embedding + embedding, "non_embedding": non_embedding}


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 per matmul weight (the LM head
    included, the input embedding lookup not) plus attention scores and values counted as
    nanoGPT does (12·L·d·T, no discount for causality), so MFU compares like with like."""
    d, L = cfg.d_model, cfg.n_layer
    matmul_params = L * (4 * d * d + 3 * d * cfg.mlp_hidden) + cfg.vocab_size * d
    return 6 * matmul_params + 12 * L * d * seq_len
