"""The chunked loss head (nanoGPT/fused_head.py) against the naive whole-logits computation.

References, written here from the definitions and never from the module under test:
- softmax cross-entropy through torch.log_softmax on float64 logits h @ W.T, z-loss as
  γ·mean(logsumexp(z)²), StableMax from s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0) with
  log(s / Σ s), all differentiated by autograd in float64;
- the logit statistics from the full float64 logit matrix.
The head computes in float32 (its row math) from float32 inputs, so it must agree to float32
precision; chunking must not change anything beyond float32 rounding.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from formulas import stablemax_s_ref
from nanoGPT.fused_head import LossHead
from nanoGPT.mitigations import Mitigation
from nanoGPT.model import GPT, GPTConfig

IGNORE = -100
HEADS = {"softmax": dict(), "z-loss": dict(z_gamma=3e-2), "stablemax": dict(stablemax=True)}


def reference(h64: torch.Tensor, W64: torch.Tensor, t: torch.Tensor, kind: str, gamma: float = 0.0) -> torch.Tensor:
    z = h64 @ W64.T
    keep = t != IGNORE
    if kind == "stablemax":
        s = stablemax_s_ref(z)
        logp = torch.log(s / s.sum(1, keepdim=True))
    else:
        logp = torch.log_softmax(z, 1)
    nll = -logp[keep].gather(1, t[keep].unsqueeze(1)).squeeze(1)
    loss = nll.mean()
    if gamma:
        loss = loss + gamma * torch.logsumexp(z[keep], 1).pow(2).mean()
    return loss


def problem(N=45, d=12, V=31, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, d, generator=g) * scale).requires_grad_()
    W = torch.randn(V, d, generator=g).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[[2, 17]] = IGNORE
    return h, W, t


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("chunk", [1, 7, 45, 1000])
def test_loss_and_gradients_match_float64_reference(kind, chunk):
    h, W, t = problem()
    out = LossHead(chunk_rows=chunk, **HEADS[kind])(h, W, t)
    out["loss"].backward()
    h64, W64 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    ref = reference(h64, W64, t, "stablemax" if kind == "stablemax" else "softmax", HEADS[kind].get("z_gamma", 0.0))
    ref.backward()
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(W.grad.double(), W64.grad, rtol=1e-5, atol=1e-7)
    # ignored rows get no gradient at all
    assert h.grad[[2, 17]].abs().max().item() == 0.0


@pytest.mark.parametrize("kind", HEADS)
def test_parts_and_logit_statistics(kind):
    h, W, t = problem(seed=1)
    out = LossHead(chunk_rows=8, **HEADS[kind])(h, W, t)
    z = h.detach().double() @ W.detach().double().T
    keep = t != IGNORE
    lse = torch.logsumexp(z[keep], 1)
    gamma = HEADS[kind].get("z_gamma", 0.0)
    assert out["aux"].item() == pytest.approx(gamma * lse.pow(2).mean().item(), rel=1e-5, abs=1e-12)
    assert out["ce"].item() + out["aux"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    assert out["lse_sq_mean"].item() == pytest.approx(lse.pow(2).mean().item(), rel=1e-5)
    softmax_ce = -torch.log_softmax(z[keep], 1).gather(1, t[keep].unsqueeze(1)).mean()
    assert out["ce_softmax"].item() == pytest.approx(softmax_ce.item(), rel=1e-5)  # for StableMax heads too
    assert out["logit_mean"].item() == pytest.approx(z.mean().item(), abs=1e-5)
    assert out["logit_std"].item() == pytest.approx(z.std(unbiased=False).item(), rel=1e-5)
    assert out["logit_max"].item() == pytest.approx(z.max().item(), rel=1e-6)


@pytest.mark.parametrize("kind", HEADS)
def test_without_diagnostics_the_loss_and_gradients_are_unchanged(kind):
    """Training's head between log steps: the same loss and gradients (to the last bit on the
    CPU), the loss's own parts finite, and the skipped statistics NaN rather than a wrong number."""
    h, W, t = problem(seed=5)
    grads = {}
    for diagnostics in (True, False):
        hh, WW = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
        out = LossHead(chunk_rows=8, diagnostics=diagnostics, **HEADS[kind])(hh, WW, t)
        out["loss"].backward()
        grads[diagnostics] = out, hh.grad, WW.grad
    (on, gh_on, gW_on), (off, gh_off, gW_off) = grads[True], grads[False]
    assert torch.equal(off["loss"], on["loss"]) and torch.equal(off["ce"], on["ce"]) and torch.equal(off["aux"], on["aux"])
    assert torch.equal(gh_off, gh_on) and torch.equal(gW_off, gW_on)
    for key in ("logit_mean", "logit_std", "logit_max"):
        assert torch.isnan(off[key]) and torch.isfinite(on[key])
    softmax_parts_skipped = kind == "stablemax"  # a softmax head needs log Σ exp for its loss anyway
    for key in ("lse_sq_mean", "ce_softmax"):
        assert bool(torch.isnan(off[key])) == softmax_parts_skipped
        if not softmax_parts_skipped:
            assert torch.equal(off[key], on[key])


def test_upstream_gradient_scales_and_partial_requires_grad():
    h, W, t = problem(seed=2)
    head = LossHead(chunk_rows=10)
    (0.25 * head(h, W, t)["loss"]).backward()
    gh, gW = h.grad.clone(), W.grad.clone()
    h.grad = W.grad = None
    head(h, W, t)["loss"].backward()
    torch.testing.assert_close(gh, 0.25 * h.grad)
    torch.testing.assert_close(gW, 0.25 * W.grad)
    # only W trainable (a frozen body), then only h (a frozen head)
    Wf = W.detach().clone().requires_grad_()
    head(h.detach(), Wf, t)["loss"].backward()
    torch.testing.assert_close(Wf.grad, W.grad)
    hf = h.detach().clone().requires_grad_()
    head(hf, W.detach(), t)["loss"].backward()
    torch.testing.assert_close(hf.grad, h.grad)


def test_no_grad_gives_the_same_loss():
    h, W, t = problem(seed=3)
    head = LossHead(chunk_rows=6, stablemax=True)
    with torch.no_grad():
        a = head(h, W, t)
    b = head(h, W, t)
    assert not a["loss"].requires_grad
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-7)


def test_all_targets_ignored_is_zero_not_nan():
    h, W, _ = problem(seed=4)
    t = torch.full((h.size(0),), IGNORE)
    out = LossHead(chunk_rows=5)(h, W, t)
    out["loss"].backward()
    assert out["loss"].item() == 0.0
    assert torch.isfinite(h.grad).all() and h.grad.abs().max().item() == 0.0
    assert W.grad.abs().max().item() == 0.0


def test_bfloat16_autocast_runs_matmuls_in_bf16_and_keeps_input_dtypes():
    h, W, t = problem(N=64, d=32, V=50, seed=5, scale=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LossHead(chunk_rows=16)(h, W, t)
    out["loss"].backward()
    assert h.grad.dtype == torch.float32 and W.grad.dtype == torch.float32
    # the reference computes the logits from bf16-rounded operands, as autocast's linear does
    hb, Wb = h.detach().bfloat16().double(), W.detach().bfloat16().double()
    ref = reference(hb, Wb, t, "softmax")
    assert out["loss"].item() == pytest.approx(ref.item(), abs=2e-2)
    exact = reference(h.detach().double(), W.detach().double(), t, "softmax")
    assert out["loss"].item() != exact.item()  # bf16 was really used


def test_float32_logits_are_the_bf16_products_unrounded():
    # Logits around -40, where bf16 rounds to multiples of 0.25: the rounding is what the
    # option removes, and it must be visible in the default head's loss.
    h, W, t = problem(N=64, d=32, V=50, seed=6, scale=1.0)
    with torch.no_grad():
        h[:, 0] = 8.0
        W[:, 0] = -5.0
    hb, Wb = h.detach().bfloat16().double(), W.detach().bfloat16().double()
    ref = reference(hb, Wb, t, "softmax").item()  # float64 logits from the bf16 operands
    losses = {}
    for f32 in (False, True):
        h.grad = W.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = LossHead(chunk_rows=16, float32_logits=f32)(h, W, t)
        out["loss"].backward()
        assert h.grad.dtype == torch.float32 and W.grad.dtype == torch.float32
        assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
        losses[f32] = out["loss"].item()
    assert losses[True] == pytest.approx(ref, rel=1e-6)
    assert abs(losses[False] - ref) > 1e-3  # bf16 logits are rounded


def test_refusals():
    with pytest.raises(ValueError, match="z-loss"):
        LossHead(stablemax=True, z_gamma=1e-4)
    with pytest.raises(ValueError, match="chunk_rows"):
        LossHead(chunk_rows=0)


@pytest.mark.parametrize("spec,gamma", [("baseline", 0.0), ("z-loss", 1e-2), ("mu-loss", 0.5), ("stablemax", 0.0)])
def test_model_with_head_equals_naive_logits_path(spec, gamma):
    """GPT.forward(idx, targets, head) + the mu-loss penalty == Mitigation.loss on full logits,
    for the loss and every parameter's gradient (the training loop's objective, both ways)."""
    from nanoGPT.train import forward_loss
    cfg = GPTConfig.from_scale("tiny", vocab_size=97, block_size=16)
    mit = Mitigation.from_spec(spec, gamma)
    torch.manual_seed(0)
    a = GPT(cfg).double()
    b = GPT(cfg).double()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 97, (3, 16))
    tgt = torch.randint(0, 97, (3, 16))
    loss_a, aux_a, out = forward_loss(a, a, idx, tgt, LossHead.for_mitigation(mit, chunk_rows=20), mit)
    loss_a.backward()
    ref = mit.loss(b(idx), tgt, b.output_embedding)
    ref["loss"].backward()
    assert loss_a.item() == pytest.approx(ref["loss"].item(), rel=1e-6)
    assert aux_a.item() == pytest.approx(ref["aux"].item(), rel=1e-5, abs=1e-12)
    assert out["ce"].item() == pytest.approx(ref["ce"].item(), rel=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        # both paths do the row math in float32: agree to float32 rounding of the largest entry
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6 * pb.grad.abs().max().item(), msg=name)


def test_compiled_training_matches_eager(tmp_path, shards):
    """system.compile=on on CPU (inductor): the compiled chunk math, ⊥Grad and mu-centering
    train like the eager code to float32 rounding."""
    losses = {}
    for mode in ("off", "on"):
        for method in ("orthograd", "mu-centering"):
            out = tmp_path / f"{mode}-{method}"
            cmd = [sys.executable, "-m", "nanoGPT.train", "model.scale=tiny", "batch.batch_size=4", "batch.seq_len=64",
                   "schedule.max_steps=3", "schedule.warmup_steps=1", f"method.name={method}", f"system.compile={mode}",
                   f"out_dir={out}", "log.log_interval=1", f"data.train={shards['train']}", f"data.val={shards['val']}"]
            subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
            log = next(out.glob("*/log.jsonl")).read_text().splitlines()
            losses[mode, method] = [float(line.split('"loss": ')[1].split(",")[0]) for line in log]
    for method in ("orthograd", "mu-centering"):
        assert len(losses["on", method]) == 3
        assert losses["on", method] == pytest.approx(losses["off", method], rel=2e-5)


@pytest.mark.parametrize("diagnostics", [True, False])
@pytest.mark.parametrize("stablemax,gamma", [(False, 3e-2), (True, 0.0)])
def test_compiled_chunk_math_equals_eager(stablemax, gamma, diagnostics):
    """The two forms of the per-chunk math (one-hot in the fused kernel when compiled, a
    scatter on the target entries when eager) give the same gradient and statistics."""
    from nanoGPT.fused_head import _chunk
    g = torch.Generator().manual_seed(7)
    z = torch.randn(24, 40, generator=g) * 4
    t = torch.randint(0, 40, (24,), generator=g)
    t[5] = IGNORE
    w = (t != IGNORE).float() / 23
    eager = _chunk(z, t, w, stablemax, gamma, True, None, diagnostics)
    compiled = torch.compile(_chunk, dynamic=False)(z, t, w, stablemax, gamma, True, None, diagnostics)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert eager[1].isnan().any().item() == (not diagnostics)
    assert eager[0][5].abs().max().item() == 0.0  # the ignored row
