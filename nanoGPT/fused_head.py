"""The LM head and its loss, in chunks of tokens: logits never exist for the whole batch.

At V = 50304 the logits of one micro-batch are the largest tensor of a step (32 x 2048
tokens: 6.6 GB in bf16, twice that in float32), and autograd would keep them until the
backward pass. Here, chunk by chunk of rows, the logits are computed, reduced to the loss,
and turned at once into their gradient, which goes straight into dL/dh and dL/dE; only those
two (the size of h and of E) wait for the backward pass. Peak memory is one chunk's logits
and gradient, whatever the method, and the backward pass re-reads nothing of size V.

Per row with logits z, target t, and ignored rows (target == ignore_index) weighing 0, the
mean over kept rows of:
- softmax:   ce = lse − z_t,  lse = logsumexp(z);  z-loss adds γ·lse²
             d/dz_j = p_j·(1 + 2γ·lse) − [j = t],  p = softmax(z)
- StableMax: ce = log S − log s(z_t),  S = Σ_j s(z_j),  s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0)
             d/dz_j = s'(z_j)/S − [j = t]·s'(z_t)/s(z_t),  s'(x) = 1 (x ≥ 0), 1/(1 − x)² (x < 0)
The same pass sums what the published runs log about the logits (Σz, Σz², max z, Σ lse²),
so the diagnostics cost no extra read of the logits; they still cost arithmetic per logit
(for StableMax an exponential), so a head with ``diagnostics=False`` skips them.

The matrix products run in the autocast dtype when autocast is on (bf16 on the GPU, as the
unchunked head would), the per-row math in float32 (float64 for a float64 model, so that
float64 checks of the training loop are exact). With ``float32_logits`` the logits are the
same bf16 products, accumulated in float32 as always, but not rounded to bf16 on output; the
gradient is rounded as before, so only the logits' rounding differs.

Each chunk's row math (statistics and gradient) has two implementations with one set of
formulas: on a GPU, one hand-written Triton kernel (triton_head.py: two passes over each row,
the gradient written over the logits); elsewhere, and with ``triton=False``, ``_chunk`` in
torch, which inductor fuses when the head is compiled. On an H200 the kernel takes 0.58 ms for
a chunk of 8192 x 50304 bf16 logits where inductor's fusion takes 0.95 ms: the 16M step is
7.7% shorter (results/benchmarks/README.md, call 14).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .mitigations import IGNORE_INDEX, compiled, log_stablemax_s, stablemax_s

# Columns of the statistics vector (sums over kept rows, but Z_MAX; the logit moments over all rows).
CE_SUM, LSE_SQ_SUM, Z_SUM, Z_SQ_SUM, Z_MAX, N_KEPT, SOFTMAX_CE_SUM = range(7)


def _chunk(logits: torch.Tensor, targets: torch.Tensor, keep_weight: torch.Tensor, stablemax: bool, z_gamma: float,
           with_grad: bool, grad_dtype: torch.dtype | None = None,
           diagnostics: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradient of Σ_rows keep_weight·(ce + γ·lse²) w.r.t. the logits (in grad_dtype, default the
    logits' dtype), and the statistics [Σ ce, Σ lse², Σ z, Σ z², max z, kept rows, Σ softmax ce]
    of the chunk in keep_weight's dtype (the row math's: float32, float64 for a float64 model).
    Without ``diagnostics`` the statistics the loss does not need are NaN and cost nothing:
    the logit moments and max, and for StableMax the softmax ones (Σ lse², Σ softmax ce),
    which would cost it an exponential per logit.

    Written for both of its uses: eager on the CPU, where every [rows, V] temporary is a pass
    over memory (hence the in-place products, and a scatter for the target entries when eager),
    and compiled on a GPU without the Triton kernel, where inductor fuses it into one kernel."""
    z = logits.to(keep_weight.dtype)
    kept = keep_weight != 0
    t = targets.clamp(min=0).unsqueeze(1)
    z_t = z.gather(1, t).squeeze(1)
    # log Σ exp z written as inductor's online-softmax pattern (max, x − max, exp, sum), which on
    # the GPU computes the max and the sum in one read of z; torch.logsumexp's decomposition puts
    # an inf guard between them and costs a read more. Logits are finite here: an inf makes the
    # loss NaN, which the divergence monitor reports.
    has_lse = diagnostics or not stablemax  # StableMax's loss needs no log Σ exp
    if has_lse:
        z_max = z.amax(1, keepdim=True)
        exp_z = torch.sub(z, z_max).exp_()
        sum_exp = exp_z.sum(1, keepdim=True)
        lse = (z_max + sum_exp.log()).squeeze(1)
    if stablemax:
        s = stablemax_s(z)
        S = s.sum(1, keepdim=True)
        ce = torch.log(S.squeeze(1)) - log_stablemax_s(z_t)
    else:
        ce = lse - z_t
    # Row reductions first (they share the read of z with the log-sum-exp), then over rows.
    stats = chunk_statistics(kept, ce, lse if has_lse else None, lse - z_t if has_lse else None,
                             z.sum(1) if diagnostics else None,
                             torch.linalg.vector_norm(z, dim=1).square() if diagnostics else None,
                             z_max.squeeze(1) if diagnostics else None)
    if not with_grad:
        return None, stats
    w = keep_weight.unsqueeze(1)
    if stablemax:
        # s'(z) = 1 for z ≥ 0 and 1/(1 − z)² below, one branch-free formula; the target's term is
        # s'(z_t)/s(z_t) = 1/(1 + |z_t|). On the GPU the whole chunk is one fused kernel that
        # recomputes per logit what the gradient needs, so this costs one division per logit (less
        # than recomputing s(z) to square it). That arithmetic is StableMax's extra step time
        # (results/benchmarks/README.md, call 4).
        grad = torch.clamp(z, max=0).neg_().add_(1).square_().reciprocal_().mul_(w / S)
        target_term = w * torch.reciprocal(1 + z_t.abs()).unsqueeze(1)
    else:
        grad = exp_z.mul_(w * (1 + 2 * z_gamma * lse).unsqueeze(1) / sum_exp)  # w · softmax · (1 + 2γ·lse)
        target_term = w
    if torch.compiler.is_compiling():  # one fused pointwise kernel
        grad = grad - (torch.arange(z.size(1), device=z.device) == t) * target_term
    else:  # eager: touch only the target entries
        grad.scatter_add_(1, t, -target_term)
    return grad.to(grad_dtype or logits.dtype), stats


def chunk_statistics(kept: torch.Tensor, ce: torch.Tensor, lse: torch.Tensor | None, softmax_ce: torch.Tensor | None,
                     z_sum: torch.Tensor | None, z_sq: torch.Tensor | None, z_max: torch.Tensor | None) -> torch.Tensor:
    """A chunk's statistics [Σ ce, Σ lse², Σ z, Σ z², max z, kept rows, Σ softmax ce] (columns
    CE_SUM ... SOFTMAX_CE_SUM; sums over kept rows but the logit moments) from its per-row
    values, in ce's dtype; a value not given (None) is NaN."""
    nan = torch.full((), math.nan, dtype=ce.dtype, device=ce.device)
    return torch.stack([torch.where(kept, ce, 0).sum(),
                        torch.where(kept, lse.square(), 0).sum() if lse is not None else nan,
                        z_sum.sum() if z_sum is not None else nan,
                        z_sq.sum() if z_sq is not None else nan,
                        z_max.max() if z_max is not None else nan, kept.sum().to(ce.dtype),
                        torch.where(kept, softmax_ce, 0).sum() if softmax_ce is not None else nan])


def _triton_chunk(logits, targets, keep_weight, stablemax, z_gamma, with_grad, grad_dtype, diagnostics,
                  compile_statistics: bool = False):
    """_chunk's results from the Triton kernel (nanoGPT/triton_head.py); the logits are consumed."""
    from .triton_head import head_rows
    grad, rows = head_rows(logits, targets, keep_weight, stablemax, z_gamma, with_grad, grad_dtype, diagnostics)
    statistics = compiled(_row_table_statistics) if compile_statistics else _row_table_statistics
    return grad, statistics(keep_weight, rows)


def _row_table_statistics(keep_weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return chunk_statistics(keep_weight != 0, *rows.unbind(1))


def _triton_usable(h: torch.Tensor) -> bool:
    """Whether the Triton kernel can take the row math of logits made from h (the head's input)."""
    if not h.is_cuda or h.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    try:
        import triton  # noqa: F401  (in every CUDA build of torch; absent from CPU installs)
    except ImportError:
        return False
    return True


def _logits(h: torch.Tensor, W: torch.Tensor, float32_out: bool) -> torch.Tensor:
    """h @ Wᵀ, in float32 when asked although h and W are bf16/fp16."""
    if not float32_out or h.dtype in (torch.float32, torch.float64):
        return h @ W.t()
    if h.is_cuda:
        return torch.mm(h, W.t(), out_dtype=torch.float32)  # cuBLAS's float32 accumulator, not rounded
    return h.float() @ W.t().float()  # bf16 and fp16 values are exact in float32: the same products


class _HeadLoss(torch.autograd.Function):
    """loss(h, W) with its gradient computed in the forward pass; backward only scales it."""

    @staticmethod
    def forward(ctx, h, W, targets, head: "LossHead"):
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            return _HeadLoss._run(ctx, h, W, targets, head, dtype)

    @staticmethod
    def _run(ctx, h, W, targets, head, dtype):
        grad_h, grad_W = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_grad = grad_h or grad_W
        hc, Wc = h.to(dtype), W.to(dtype)
        keep = (targets != head.ignore_index)
        math_dtype = torch.promote_types(dtype, torch.float32)  # of the per-row math and of dW
        keep_weight = keep.to(math_dtype) / keep.sum().clamp(min=1)  # mean over kept rows; no host sync
        dh = torch.empty_like(hc) if grad_h else None
        dW = torch.zeros_like(W, dtype=math_dtype) if grad_W else None
        if head.triton and _triton_usable(hc):
            chunk = functools.partial(_triton_chunk, compile_statistics=head.compiled)
        else:
            chunk = compiled(_chunk) if head.compiled else _chunk
        stats = []
        for start in range(0, h.size(0), head.chunk_rows):
            rows = slice(start, start + head.chunk_rows)
            logits = _logits(hc[rows], Wc, head.float32_logits)
            # the gradient in the matmuls' dtype, also when the logits were float32
            g, st = chunk(logits, targets[rows], keep_weight[rows], head.stablemax, head.z_gamma, with_grad, hc.dtype,
                          head.diagnostics)
            del logits
            stats.append(st)
            if grad_h:
                torch.mm(g, Wc, out=dh[rows])
            if grad_W:
                dW.add_(g.t() @ hc[rows])
        stats = torch.stack(stats)
        totals = torch.cat([stats[:, :Z_MAX].sum(0), stats[:, Z_MAX].max().unsqueeze(0), stats[:, N_KEPT:].sum(0)])
        n = totals[N_KEPT].clamp(min=1)
        ce, lse_sq = totals[CE_SUM] / n, totals[LSE_SQ_SUM] / n
        loss = ce + head.z_gamma * lse_sq if head.z_gamma else ce
        ctx.save_for_backward(dh, dW)
        ctx.h_dtype = h.dtype
        ctx.mark_non_differentiable(totals)
        return loss, totals

    @staticmethod
    def backward(ctx, grad_loss, _grad_totals):
        dh, dW = ctx.saved_tensors
        return (None if dh is None else (dh * grad_loss).to(ctx.h_dtype),
                None if dW is None else dW * grad_loss, None, None)


@dataclass(frozen=True)
class LossHead:
    """What the head computes: softmax or StableMax cross-entropy, plus γ·mean(lse²) (z-loss)
    when z_gamma > 0. ``compiled``: the per-chunk torch math under torch.compile (GPU training)."""
    stablemax: bool = False
    z_gamma: float = 0.0
    chunk_rows: int = 8192
    compiled: bool = False
    # On a GPU, the row math as the hand-written Triton kernel (triton_head.py), compiled or not;
    # False: _chunk, fused by inductor when compiled (the comparison of scripts/benchmark_head_kernel.py).
    triton: bool = True
    ignore_index: int = IGNORE_INDEX
    float32_logits: bool = False    # the logits not rounded to the autocast dtype (see the module's docstring)
    # False: the statistics that the loss does not need come out NaN, at no cost (see _chunk).
    # Training turns them off between log steps, where nobody reads them.
    diagnostics: bool = True

    @classmethod
    def for_mitigation(cls, mitigation, **kw) -> "LossHead":
        """The head a run's method needs (mu-loss acts on E, outside the head: Mitigation.embedding_penalty)."""
        return cls(stablemax=mitigation.stablemax, z_gamma=mitigation.gamma if "z-loss" in mitigation.components else 0.0, **kw)

    def __post_init__(self):
        if self.stablemax and self.z_gamma:
            raise ValueError("z-loss penalises the softmax normaliser, which a StableMax head does not use")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")

    @torch.compiler.disable  # runs eagerly between compiled graphs; its chunk math is compiled on its own
    def __call__(self, h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """h [..., d] final hidden states, W [V, d] the LM head weight, targets [...].

        Returns ``loss`` (differentiable: ce + z-loss), ``ce`` (of the head's own distribution),
        ``ce_softmax`` (always softmax), ``aux`` (the z-loss term), the logit diagnostics
        ``lse_sq_mean``, ``logit_mean``, ``logit_std``, ``logit_max``, and ``sums``, the raw
        statistics vector (columns CE_SUM ... SOFTMAX_CE_SUM) to add up over batches. Without
        ``diagnostics``, the logit diagnostics (and, for StableMax, ``ce_softmax`` and
        ``lse_sq_mean``) are NaN."""
        loss, t = _HeadLoss.apply(h.reshape(-1, h.size(-1)), W, targets.reshape(-1), self)
        n = t[N_KEPT].clamp(min=1)
        n_logits = targets.numel() * W.size(0)  # a Python number: a tensor made from it would sync the host
        mean = t[Z_SUM] / n_logits
        ce = t[CE_SUM] / n
        aux = self.z_gamma * t[LSE_SQ_SUM] / n if self.z_gamma else torch.zeros_like(ce)  # 0, not 0·NaN
        return {"loss": loss, "ce": ce, "ce_softmax": t[SOFTMAX_CE_SUM] / n, "aux": aux,
                "lse_sq_mean": t[LSE_SQ_SUM] / n, "logit_mean": mean, "sums": t,
                "logit_std": (t[Z_SQ_SUM] / n_logits - mean.square()).clamp(min=0).sqrt(), "logit_max": t[Z_MAX]}
