"""The loss head's per-row math (nanoGPT/fused_head.py, ``_chunk``) as one hand-written Triton
kernel: the GPU path of the chunked head.

One program per row of a chunk's logits z [R, V]. Pass 1 reads the row once: the online max
and Σ exp (softmax), Σ s(z) (StableMax) and, with diagnostics, Σz and Σz². Pass 2 reads it
again, back to front so that the part pass 1 read last is still in L2, and writes the
gradient, over z itself when the two have one dtype. Per row it writes, in float32,
[ce, log Σ exp, softmax ce, Σz, Σz², max z]; ``fused_head.chunk_statistics`` sums them as the
torch path does.

Why by hand: inductor fuses ``_chunk`` into one kernel of the same two passes, but on an H200
it takes 0.95 ms for a chunk of 8192 x 50304 bf16 logits, 2.6 TB/s counting both reads and the
write, and this kernel 0.58 ms (4.3 TB/s: its second read mostly hits L2; a plain copy of the
logits runs at 4.2). At 16M that kernel was a quarter of the step; the step is now 7.7% shorter
(results/benchmarks/README.md, call 14).

The math is the torch path's (fused_head's module docstring): the same per-row formulas in
float32. What differs is rounding: the order of the float32 sums, and Triton's float32
division: in call 19 the explicitly approximate one (tl.fdiv, ieee_rounding=False, within 2
ulp) gave bit-identical gradients and statistics, so ``/`` is that instruction here. Tests run this kernel on the CPU through
Triton's interpreter (TRITON_INTERPRET=1) against float64 formulas written from the definitions.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns of the per-row output.
ROW_CE, ROW_LSE, ROW_SOFTMAX_CE, ROW_Z_SUM, ROW_Z_SQ, ROW_Z_MAX = range(6)
# (logits per loop iteration, warps) of a softmax and of a StableMax head: the fastest of six
# settings on an H200 (results/benchmarks/issue4/head_kernel_h200.md; scripts/benchmark_head_kernel.py).
LAUNCH = {False: (4096, 8), True: (2048, 8)}


@triton.jit
def _head_rows_kernel(z_ptr, g_ptr, t_ptr, w_ptr, out_ptr, V, z_stride, g_stride, z_gamma,
                      STABLEMAX: tl.constexpr, LSE: tl.constexpr, DIAG: tl.constexpr, GRAD: tl.constexpr,
                      BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    t = tl.maximum(tl.load(t_ptr + row), 0)  # ignored rows (negative target) weigh 0 anyway
    w = tl.load(w_ptr + row).to(tl.float32)
    z_t = tl.load(z_row + t).to(tl.float32)
    offs = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), tl.float32)   # running max
    e = tl.full((), 0.0, tl.float32)             # Σ exp(z − m)
    S = tl.full((), 0.0, tl.float32)             # Σ s(z)
    z_sum = tl.full((), 0.0, tl.float32)
    z_sq = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        if LSE:
            m_new = tl.maximum(m, tl.max(x, 0))
            e = e * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        x0 = tl.where(mask, x, 0.0)
        if STABLEMAX:  # s(x) = relu(x) + 1/(1 − min(x, 0)), as mitigations.stablemax_s
            s = tl.maximum(x0, 0.0) + 1.0 / (1.0 - tl.minimum(x0, 0.0))
            S += tl.sum(tl.where(mask, s, 0.0), 0)
        if DIAG:
            z_sum += tl.sum(x0, 0)
            z_sq += tl.sum(x0 * x0, 0)

    nan = tl.full((), float("nan"), tl.float32)
    lse = nan
    if LSE:
        lse = m + tl.log(e)
    if STABLEMAX:  # log s(z_t) = sign(z_t)·log(1 + |z_t|)
        log_s_t = tl.log(1.0 + tl.abs(z_t))
        ce = tl.log(S) - tl.where(z_t >= 0, log_s_t, -log_s_t)
    else:
        ce = lse - z_t
    out_row = out_ptr + row * 6  # columns ROW_CE ... ROW_Z_MAX
    tl.store(out_row + 0, ce)
    tl.store(out_row + 1, lse)
    tl.store(out_row + 2, lse - z_t)
    if DIAG:
        tl.store(out_row + 3, z_sum)
        tl.store(out_row + 4, z_sq)
        tl.store(out_row + 5, m)
    else:
        tl.store(out_row + 3, nan)
        tl.store(out_row + 4, nan)
        tl.store(out_row + 5, nan)

    if GRAD:
        g_row = g_ptr + row * g_stride
        if STABLEMAX:  # w·s'(z)/S − [j = t]·w/(1 + |z_t|),  s'(x) = 1/(1 − min(x, 0))²
            a = w / S
            target_term = w / (1.0 + tl.abs(z_t))
        else:          # w·softmax(z)·(1 + 2γ·lse) − [j = t]·w
            a = w * (1.0 + 2.0 * z_gamma * lse) / e
            target_term = w
        n_blocks = tl.cdiv(V, BLOCK)
        for i in range(n_blocks):
            cols = (n_blocks - 1 - i) * BLOCK + offs
            mask = cols < V
            x = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
            if STABLEMAX:
                d = 1.0 - tl.minimum(x, 0.0)
                g = a / (d * d)
            else:
                g = tl.exp(x - m) * a
            g = tl.where(cols == t, g - target_term, g)
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)


def head_rows(z: torch.Tensor, targets: torch.Tensor, keep_weight: torch.Tensor, stablemax: bool, z_gamma: float,
              with_grad: bool, grad_dtype: torch.dtype | None = None, diagnostics: bool = True,
              block: int | None = None, num_warps: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The gradient w.r.t. z (written over z when grad_dtype is z's dtype: z is consumed) and the
    per-row outputs [R, 6] (columns ROW_*; NaN where not computed: log Σ exp and softmax ce for a
    StableMax head without diagnostics, the logit moments without diagnostics).
    keep_weight is float32 (each row's weight in the mean, 0 for ignored rows)."""
    if z.dim() != 2 or z.stride(1) != 1:
        raise ValueError(f"logits must be a row-major [rows, V] matrix, got shape {tuple(z.shape)} strides {z.stride()}")
    R, V = z.shape
    block, num_warps = block or LAUNCH[stablemax][0], num_warps or LAUNCH[stablemax][1]
    grad = None
    if with_grad:
        grad_dtype = grad_dtype or z.dtype
        grad = z if grad_dtype == z.dtype else torch.empty((R, V), dtype=grad_dtype, device=z.device)
    out = torch.empty((R, 6), dtype=torch.float32, device=z.device)
    if R:
        g = grad if grad is not None else z
        _head_rows_kernel[(R,)](z, g, targets, keep_weight, out, V, z.stride(0), g.stride(0), float(z_gamma),
                                STABLEMAX=stablemax, LSE=diagnostics or not stablemax, DIAG=diagnostics, GRAD=with_grad,
                                BLOCK=block, num_warps=num_warps)
    return grad, out
