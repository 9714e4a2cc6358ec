"""The loss head's Triton row kernel (nanoGPT/triton_head.py), run on the CPU by Triton's
interpreter (TRITON_INTERPRET=1, set in conftest.py), against formulas written in the tests in
float64 from the definitions:
- softmax cross-entropy lse(z) − z_t, z-loss γ·lse², and their gradient
  w·(softmax(z)·(1 + 2γ·lse) − onehot(t));
- StableMax cross-entropy log Σ s(z) − log s(z_t) with s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0),
  differentiated by autograd;
- the logit moments Σz, Σz², max z of each row.
Blocks are smaller than V and do not divide it, so the online maximum has to rescale its sum
and the last block is masked. The kernel computes in float32: float32 tolerances.
"""
from __future__ import annotations

import pytest
import torch

from formulas import stablemax_s_ref
from nanoGPT.triton_head import ROW_CE, ROW_LSE, ROW_SOFTMAX_CE, ROW_Z_MAX, ROW_Z_SQ, ROW_Z_SUM, head_rows

IGNORE = -100
V = 37


def logits_and_targets(rows=7, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, V, generator=g, dtype=torch.float64) * scale
    z[1, 30] = 60.0     # the row's maximum in the last, masked block: the running sum must be rescaled
    z[2] = z[2] - 90.0  # all very negative: exp underflows in float32 unless the maximum is subtracted
    z[3, 0] = 85.0      # exp(85) overflows float32: only a max-subtracted sum survives
    t = torch.randint(0, V, (rows,), generator=g)
    t[4] = IGNORE
    keep = t != IGNORE
    w = keep.double() / keep.sum()
    return z, t, w


def reference(z, t, w, stablemax, gamma):
    """Per-row ce, lse, softmax ce and dL/dz of L = Σ w·(ce + γ·lse²), all float64."""
    z = z.clone().requires_grad_()
    tc = t.clamp(min=0)
    lse = torch.logsumexp(z, 1)
    z_t = z.gather(1, tc.unsqueeze(1)).squeeze(1)
    if stablemax:
        s = stablemax_s_ref(z)
        ce = torch.log(s.sum(1)) - torch.log(s.gather(1, tc.unsqueeze(1)).squeeze(1))
    else:
        ce = lse - z_t
    loss = (w * (ce + gamma * lse.square())).sum()
    (grad,) = torch.autograd.grad(loss, z)
    return ce.detach(), lse.detach(), (lse - z_t).detach(), grad


def closed_form_softmax_grad(z, t, w, gamma):
    p = torch.softmax(z, 1)
    lse = torch.logsumexp(z, 1, keepdim=True)
    onehot = torch.nn.functional.one_hot(t.clamp(min=0), V).double()
    return w.unsqueeze(1) * (p * (1 + 2 * gamma * lse) - onehot)


CASES = [(False, 0.0), (False, 3e-2), (True, 0.0)]


@pytest.mark.parametrize("diagnostics", [True, False])
@pytest.mark.parametrize("stablemax,gamma", CASES)
@pytest.mark.parametrize("block,warps", [(8, 1), (16, 2), (64, 4)])
def test_rows_and_gradient_match_float64_formulas(stablemax, gamma, diagnostics, block, warps):
    z, t, w = logits_and_targets()
    ce, lse, softmax_ce, grad_ref = reference(z, t, w, stablemax, gamma)
    if not stablemax:  # autograd's gradient is the closed form: the reference is itself checked
        torch.testing.assert_close(grad_ref, closed_form_softmax_grad(z, t, w, gamma), rtol=1e-12, atol=1e-15)
    z32 = z.float()
    grad, rows = head_rows(z32, t, w.float(), stablemax, gamma, True, None, diagnostics, block, warps)
    assert grad.data_ptr() == z32.data_ptr()  # one dtype: the gradient is written over the logits
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-7)
    assert grad[4].abs().max().item() == 0.0  # the ignored row
    torch.testing.assert_close(rows[:, ROW_CE].double(), ce, rtol=1e-5, atol=1e-5)
    has_lse = diagnostics or not stablemax
    for col, ref in ((ROW_LSE, lse), (ROW_SOFTMAX_CE, softmax_ce)):
        if has_lse:
            torch.testing.assert_close(rows[:, col].double(), ref, rtol=1e-5, atol=1e-5)
        else:  # a StableMax head without diagnostics never takes an exponential
            assert rows[:, col].isnan().all()
    moments = {ROW_Z_SUM: z.sum(1), ROW_Z_SQ: z.square().sum(1), ROW_Z_MAX: z.amax(1)}
    for col, ref in moments.items():
        if diagnostics:
            torch.testing.assert_close(rows[:, col].double(), ref, rtol=1e-5, atol=1e-4)
        else:
            assert rows[:, col].isnan().all()


@pytest.mark.parametrize("stablemax,gamma", CASES)
def test_bf16_logits_with_a_float32_gradient_leave_the_logits_alone(stablemax, gamma):
    z, t, w = logits_and_targets(seed=1)
    zb = z.to(torch.bfloat16)
    before = zb.clone()
    _, _, _, grad_ref = reference(zb.double(), t, w, stablemax, gamma)  # of the rounded logits the kernel sees
    grad, _ = head_rows(zb, t, w.float(), stablemax, gamma, True, torch.float32, True, 16, 2)
    assert grad.dtype == torch.float32 and grad.data_ptr() != zb.data_ptr()
    assert torch.equal(zb, before)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-7)


def test_without_gradient_the_logits_are_untouched_and_rows_agree():
    z, t, w = logits_and_targets(seed=2)
    z32 = z.float()
    before = z32.clone()
    grad, rows = head_rows(z32, t, w.float(), False, 0.0, False, None, True, 16, 2)
    assert grad is None and torch.equal(z32, before)
    _, with_grad = head_rows(z32.clone(), t, w.float(), False, 0.0, True, None, True, 16, 2)
    torch.testing.assert_close(rows, with_grad, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("stablemax,gamma", CASES)
@pytest.mark.parametrize("diagnostics", [True, False])
def test_triton_chunk_gives_the_torch_chunk_statistics(stablemax, gamma, diagnostics):
    """fused_head's two paths through one chunk: the Triton kernel's per-row outputs reduced by
    chunk_statistics, and _chunk's own reductions, agree on the statistics vector and gradient."""
    from nanoGPT.fused_head import _chunk, _triton_chunk
    z, t, w = logits_and_targets(seed=3)
    z32, w32 = z.float(), w.float()
    g_ref, s_ref = _chunk(z32.clone(), t, w32, stablemax, gamma, True, None, diagnostics)
    g, s = _triton_chunk(z32.clone(), t, w32, stablemax, gamma, True, None, diagnostics)
    torch._dynamo.reset()
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert torch.equal(s.isnan(), s_ref.isnan())


def test_refuses_a_non_row_major_matrix():
    z, t, w = logits_and_targets()
    with pytest.raises(ValueError, match="row-major"):
        head_rows(z.float().t().contiguous().t(), t, w.float(), False, 0.0, True)


@pytest.mark.parametrize("kind", [dict(), dict(z_gamma=3e-2), dict(stablemax=True)])
def test_loss_head_through_the_kernel_equals_the_torch_head(monkeypatch, kind):
    """LossHead as on a GPU (the kernel chosen, here run by the interpreter) against LossHead
    with the torch row math, which tests/test_fused_head.py checks against float64 references:
    loss, statistics, and the gradients of h and W that the kernel's output feeds."""
    import nanoGPT.fused_head as fused_head
    g = torch.Generator().manual_seed(5)
    h = (torch.randn(45, 12, generator=g) * 3).requires_grad_()
    W = torch.randn(V, 12, generator=g).requires_grad_()
    t = torch.randint(0, V, (45,), generator=g)
    t[[2, 17]] = IGNORE
    torch_head = fused_head.LossHead(chunk_rows=16, triton=False, **kind)
    ref = torch_head(h, W, t)
    ref_grads = torch.autograd.grad(ref["loss"], (h, W))
    calls = []
    real = fused_head._triton_chunk
    monkeypatch.setattr(fused_head, "_triton_usable", lambda logits: True)
    monkeypatch.setattr(fused_head, "_triton_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = fused_head.LossHead(chunk_rows=16, **kind)(h, W, t)
    grads = torch.autograd.grad(out["loss"], (h, W))
    assert len(calls) == 3  # 45 rows in chunks of 16: the kernel ran for each
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["sums"], ref["sums"], rtol=1e-5, atol=1e-4, equal_nan=True)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
