"""The loss head's per-row math on one chunk of logits, on one GPU: the hand-written Triton
kernel (nanoGPT/triton_head.py) at several block sizes and warp counts, against inductor's
fusion of fused_head._chunk and against a plain copy of the logits (the memory floor).

    python scripts/benchmark_head_kernel.py [--rows 8192] [--out DIR] [--stem NAME]

One chunk is what the head runs 4 to 16 times per step: 8192 rows of V = 50304 bf16 logits
(824 MB). Each form computes the statistics and the gradient; GB/s counts two reads of the
logits and one write of the gradient (what both forms do; a second read that hits L2 makes the
figure exceed what memory delivers). Outputs are compared with inductor's: the gradient (bf16,
so a rounding step apart at most) and the statistics.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nanoGPT.fused_head import _chunk, _row_table_statistics  # noqa: E402
from nanoGPT.mitigations import compiled  # noqa: E402
from nanoGPT.triton_head import head_rows  # noqa: E402
from scripts.benchmark import micro_benchmark_parser, table_header, time_ms, write_table  # noqa: E402

V = 50304
CASES = {"softmax": (False, 0.0, False), "z-loss": (False, 1e-4, False), "stablemax": (True, 0.0, False),
         "softmax, diagnostics": (False, 0.0, True), "stablemax, diagnostics": (True, 0.0, True)}
CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)]


def measure(rows: int, warmup: int, steps: int) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    z0 = (torch.randn(rows, V, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    t = torch.randint(0, V, (rows,), device="cuda", generator=gen)
    t[::97] = -100
    w = (t != -100).float() / (t != -100).sum()
    gb = 3 * z0.numel() * z0.element_size() / 1e9
    out, z = [], z0.clone()
    copy_ms = time_ms(lambda: z.copy_(z0), warmup, steps)
    out.append({"case": "copy (read + write)", "form": "torch", "ms": round(copy_ms, 3),
                "GB_per_s": round(2 * gb / 3 / copy_ms * 1e3)})
    for case, (stablemax, gamma, diag) in CASES.items():
        fused = compiled(_chunk)
        ref_g, ref_s = fused(z0, t, w, stablemax, gamma, True, torch.bfloat16, diag)
        ms = time_ms(lambda: fused(z0, t, w, stablemax, gamma, True, torch.bfloat16, diag), warmup, steps)
        out.append({"case": case, "form": "inductor", "ms": round(ms, 3), "GB_per_s": round(gb / ms * 1e3)})
        for block, warps in CONFIGS:
            z.copy_(z0)
            g, row_out = head_rows(z, t, w, stablemax, gamma, True, torch.bfloat16, diag, block, warps)
            s = _row_table_statistics(w, row_out)
            grad_err = ((g.float() - ref_g.float()).abs().max() / ref_g.float().abs().max()).item()
            stat_err = ((s - ref_s).abs() / ref_s.abs().clamp(min=1e-30)).nan_to_num(0).max().item()
            if not torch.equal(s.isnan(), ref_s.isnan()):
                stat_err = float("inf")  # a statistic computed by one form and not the other
            # timed in place, over what the previous call left: the timing does not depend on the values
            ms = time_ms(lambda: head_rows(z, t, w, stablemax, gamma, True, torch.bfloat16, diag, block, warps),
                         warmup, steps)
            out.append({"case": case, "form": f"triton block {block}, {warps} warps", "ms": round(ms, 3),
                        "GB_per_s": round(gb / ms * 1e3), "grad_max_rel_diff": f"{grad_err:.1e}",
                        "stats_max_rel_diff": f"{stat_err:.1e}"})
        for r in out[-len(CONFIGS) - 1:]:
            print(r, flush=True)
    return out


def main() -> None:
    p = micro_benchmark_parser(__doc__, "head_kernel")
    p.add_argument("--rows", type=int, default=8192, help="rows per chunk (LossHead.chunk_rows)")
    args = p.parse_args()
    rows = measure(args.rows, args.warmup, args.steps)
    head = table_header(f"one chunk of the loss head's row math, {args.rows} x {V} bf16 logits, statistics and "
                        f"gradient; median of {args.steps} after {args.warmup} warm-up. GB_per_s: two reads of the "
                        f"logits and one write of the gradient over the time")
    write_table(rows, args.out, args.stem, head)


if __name__ == "__main__":
    main()
