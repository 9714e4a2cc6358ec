"""Causal attention forward + backward per SDPA backend, at each scale's shape, on one GPU.

    python scripts/benchmark_attention.py [--scales 16M 221M] [--out DIR] [--stem NAME]

Our scales have 4 heads, so head dims of 56, 80, 120, 160 and 208, which no attention
kernel has a tile for: each backend pads them differently (cuDNN's backward at 221M was 16.6%
of the step, and 4x its forward, in issue4/profile_221M_baseline_chunked_h200_mb16.md).
This times PyTorch's fused backends on exactly our shapes (the scale's micro-batch x 4 heads
x 2048 x head dim, bf16), with the same q, k, v and output gradient for each, and checks that
they agree. Median of --steps after --warmup, timed with CUDA events.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nanoGPT.model import GPTConfig, get_scale  # noqa: E402
from scripts.benchmark import micro_benchmark_parser, table_header, time_ms, write_table  # noqa: E402

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def measure(scale: str, backend: str, warmup: int, steps: int, reference: dict) -> dict:
    s = get_scale(scale)
    cfg = GPTConfig.from_scale(scale)
    B, H, T, D = s.max_micro_batch, cfg.n_head, cfg.block_size, cfg.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dy = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    row = {"scale": scale, "shape": f"{B}x{H}x{T}x{D}", "backend": backend}
    attend = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    try:
        with sdpa_kernel(BACKENDS[backend]):
            y = attend()
            grads = [y.detach(), *torch.autograd.grad(y, (q, k, v), dy)]
            fwd = time_ms(attend, warmup, steps)
            both = time_ms(lambda: torch.autograd.grad(attend(), (q, k, v), dy), warmup, steps)
    except RuntimeError as e:  # a backend that does not take this shape says so instead of running
        return row | {"fwd_ms": "unsupported", "note": str(e).splitlines()[0][:80]}
    # causal: half of the 4·T²·D FLOPs of QKᵀ and PV in the forward; the backward is 2.5x that
    flops = 4 * B * H * T * T * D / 2
    ref = reference.setdefault(scale, grads)
    err = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(grads, ref))
    return row | {"fwd_ms": round(fwd, 3), "bwd_ms": round(both - fwd, 3), "fwd_bwd_ms": round(both, 3),
                  "fwd_tflops": round(flops / fwd / 1e9), "fwd_bwd_tflops": round(3.5 * flops / both / 1e9),
                  "max_rel_diff_vs_first": f"{err:.1e}"}


def main() -> None:
    p = micro_benchmark_parser(__doc__, "attention_backends")
    p.add_argument("--scales", nargs="+", default=["16M", "29M", "57M", "109M", "221M"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    args = p.parse_args()
    reference: dict = {}
    rows = []
    for scale in args.scales:
        for backend in args.backends:
            rows.append(measure(scale, backend, args.warmup, args.steps, reference))
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    head = table_header(f"cuDNN {torch.backends.cudnn.version()}; causal SDPA, bf16, median of {args.steps} after "
                        f"{args.warmup} warm-up. TFLOP/s count the causal half (backward = 2.5x forward). "
                        f"max_rel_diff_vs_first: output and q/k/v gradients against the scale's first backend")
    write_table(rows, args.out, args.stem, head)


if __name__ == "__main__":
    main()
