"""qk-LayerNorm + RoPE, forward + backward, compiled, at each scale's shape: the model's form
against a candidate, on one GPU.

    python scripts/benchmark_qk_rope.py [--scales 16M 221M] [--out DIR] [--stem NAME]

On an H200 at 221M these passes are five inductor kernels per layer, 9.4 ms of a 141 ms step
(issue4/profile_221M_baseline_chunked_h200_mb16.md). From the tensor sizes, each kernel takes
about 1 to 3 times what its reads and writes of q and k need at the H200's bandwidth (an
estimate: the profile does not say which tensors each kernel moves), so a few ms at most are
to be won. The model's RoPE splits each head into pairs, rotates them and stacks and
concatenates the result; the candidate writes the same rotation as one expression over the
whole head, x·cos + swap(x)·sin, with swap exchanging the two members of each pair and the
tables 1 and 0 on the dimensions RoPE leaves alone. Both compute in float32; their outputs and
gradients are compared here. On an H200 (call 14, results/benchmarks/issue4/qk_rope_h200.md)
the candidate's forward was faster and its backward slower: forward + backward 1.178 against
0.941 ms at 16M and 1.032 against 0.998 ms at 221M, so nanoGPT.model.Rotary keeps its form.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nanoGPT.model import GPTConfig, Rotary, get_scale  # noqa: E402
from scripts.benchmark import micro_benchmark_parser, table_header, time_ms, write_table  # noqa: E402


class PairSwapRotary(nn.Module):
    """nanoGPT.model.Rotary's rotation as x·cos + swap(x)·sin over the whole head."""

    def __init__(self, rotary: Rotary, head_dim: int):
        super().__init__()
        T, pairs = rotary.cos.shape
        rest = head_dim - 2 * pairs
        cos = torch.cat((rotary.cos.repeat_interleave(2, -1), rotary.cos.new_ones(T, rest)), -1)
        sin = torch.stack((-rotary.sin, rotary.sin), -1).flatten(-2)  # (x0, x1) -> (x0·c − x1·s, x1·c + x0·s)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", torch.cat((sin, sin.new_zeros(T, rest)), -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, T, head_dim]
        T = x.size(-2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 -> float32, float64 kept
        swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return (xf * self.cos[:T] + swapped * self.sin[:T]).type_as(x)


def qk(q_norm, k_norm, rotary, qkv: torch.Tensor):
    """The attention block's path from the qkv projection ([B, T, 3, H, D]) to q and k."""
    q, k, _ = qkv.permute(2, 0, 3, 1, 4)
    return rotary(q_norm(q)), rotary(k_norm(k))


def measure(scale: str, warmup: int, steps: int) -> list[dict]:
    s, cfg = get_scale(scale), GPTConfig.from_scale(scale)
    B, T, H, D = s.max_micro_batch, cfg.block_size, cfg.n_head, cfg.head_dim
    q_norm, k_norm = nn.LayerNorm(D, bias=False).cuda(), nn.LayerNorm(D, bias=False).cuda()
    rotary = Rotary(D // 2, T, cfg.rope_theta).cuda()
    forms = {"model (pairs, stack, cat)": rotary, "candidate (x·cos + swap(x)·sin)": PairSwapRotary(rotary, D).cuda()}
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        q, _ = qk(q_norm, k_norm, rotary, qkv)  # the output's shape and dtype, for one pair of output gradients
    dq, dk = (torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=gen) for _ in range(2))
    rows, first = [], None
    for name, rope in forms.items():
        compiled = torch.compile(lambda x, rope=rope: qk(q_norm, k_norm, rope, x), dynamic=False)

        def fn(x, compiled=compiled):  # as in training: under bf16 autocast (LayerNorm then runs in float32)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return compiled(x)

        q, k = fn(qkv)
        step = lambda: torch.autograd.grad(fn(qkv), (qkv, q_norm.weight, k_norm.weight), (dq, dk))  # noqa: E731
        outs = [t.detach().float() for t in (q, k, *step())]
        first = first or outs
        err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, first))
        fwd = time_ms(lambda: fn(qkv), warmup, steps)
        both = time_ms(step, warmup, steps)
        # one read of q, k and one write of the outputs each way, and the write of qkv's gradient
        floor_bytes = 2 * (2 * q.numel() * 2 + 2 * q.numel() * q.element_size()) + qkv.numel() * 2
        rows.append({"scale": scale, "shape": f"{B}x{T}x3x{H}x{D}", "form": name, "out_dtype": str(q.dtype)[6:],
                     "fwd_ms": round(fwd, 3), "fwd_bwd_ms": round(both, 3),
                     "x_memory_floor": round(both / (floor_bytes / 4.8e12 * 1e3), 1),
                     "max_rel_diff_vs_model": f"{err:.1e}"})
    return rows


def main() -> None:
    p = micro_benchmark_parser(__doc__, "qk_rope")
    p.add_argument("--scales", nargs="+", default=["16M", "29M", "57M", "109M", "221M"])
    args = p.parse_args()
    rows = []
    for scale in args.scales:
        rows += measure(scale, args.warmup, args.steps)
        for r in rows[-2:]:
            print(r, flush=True)
    head = table_header(f"one layer's qk-LayerNorm + RoPE on q and k, compiled, under bf16 autocast; median of "
                        f"{args.steps} after {args.warmup} warm-up. x_memory_floor: forward + backward time over the "
                        f"time to read q and k and write the outputs once each way, and write qkv's gradient, at "
                        f"4.8 TB/s (H200)")
    write_table(rows, args.out, args.stem, head)


if __name__ == "__main__":
    main()
