"""Mu-centering changes nothing but the numerics: in exact arithmetic it is a reparameterisation.

Why, for softmax cross-entropy with untied output embeddings E (rows e_v) and hidden state h:
- centering shifts every logit of a row by the same μ·h, and softmax is shift-invariant, so
  the loss and p = softmax(z) are unchanged;
- dL/dE = (p − y)ᵀh is unchanged, and dL/dh = (p − y)E loses (Σ_v (p_v − y_v))·μ = 0;
- so every gradient is the baseline's, and AdamW's update of E (Adam's moments, decoupled
  weight decay, the global-norm clip) is linear in E where it involves E at all, so it
  commutes with removing the mean row: after every step E_centred = E_baseline − mean row.

The reproduction's report leans on this: any gap between baseline and mu-centering runs
comes from bf16 rounding (of the logits and of the products through E), not from the
optimisation. Checked here in float64 with the training loop's own forward_loss and
optimizer_update, at a learning rate high enough that ‖μ‖ grows; the controls show the check can fail: mu-loss (which pulls μ to 0 by a gradient)
and tied embeddings (where centering moves the input embeddings too) break the invariance.

The check runs 6 steps. The centred model's logits are shifted by μ·h, so they round
differently, and at this learning rate training amplifies rounding quickly. On an AMD EPYC
CPU the largest parameter difference was 2e-11 after 6 steps, 6e-8 after 12 and 8e-5 after
24; 12 steps at a 1e-10 tolerance had passed on another CPU and failed on that one. At 6 steps
‖μ‖ is already 0.72, and the controls differ by 4e-3 (mu-loss) and 0.1 (tied).
"""
from __future__ import annotations

import torch

from nanoGPT.config import load_config
from nanoGPT.fused_head import LossHead
from nanoGPT.model import GPT
from nanoGPT.train import DivergenceMonitor, build_optimizer, forward_loss, optimizer_update


def train_float64(method: str, *, steps: int = 6, gamma: float = 0.0, tie: bool = False):
    cfg = load_config(overrides=["model.scale=tiny", f"method.name={method}", f"method.gamma={gamma}",
                                 f"model.tie_weights={str(tie).lower()}", "optim.lr=0.03", "optim.weight_decay=0.1",
                                 "optim.grad_clip=1.0"])
    torch.manual_seed(0)
    model = GPT(cfg.gpt_config()).double()
    optimizer = build_optimizer(model, cfg, "cpu")
    head = LossHead.for_mitigation(cfg.mitigation, chunk_rows=37)
    monitor = DivergenceMonitor(0.0, torch.device("cpu"))
    data = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        x = torch.randint(0, cfg.gpt_config().vocab_size, (4, 17), generator=data)
        y = torch.roll(x, -1, dims=1)
        loss, _, out = forward_loss(model, model, x, y, head, cfg.mitigation)
        loss.backward()
        optimizer_update(model, optimizer, cfg.mitigation, monitor, step, loss.detach(), cfg.optim.grad_clip, compile=False)
        losses.append(float(out["ce"]))
    return torch.tensor(losses, dtype=torch.float64), model


def test_mu_centering_follows_the_baseline_exactly_in_float64():
    base_losses, base = train_float64("baseline")
    cent_losses, cent = train_float64("mu-centering")
    E = base.output_embedding.detach()
    assert E.mean(0).norm() > 1e-2  # μ did move in the baseline, so centering had work to do
    torch.testing.assert_close(cent_losses, base_losses, rtol=1e-10, atol=0)
    torch.testing.assert_close(cent.output_embedding.detach(), E - E.mean(0), rtol=0, atol=1e-9)
    for (name, p), q in zip(base.named_parameters(), cent.parameters()):
        if p is not base.output_embedding:
            torch.testing.assert_close(q, p, rtol=0, atol=1e-9, msg=name)


def test_the_invariance_check_can_fail():
    base_losses, _ = train_float64("baseline")
    mu_loss_losses, _ = train_float64("mu-loss", gamma=10.0)
    assert (mu_loss_losses - base_losses).abs().max() > 1e-6
    tied_base, _ = train_float64("baseline", tie=True)
    tied_cent, _ = train_float64("mu-centering", tie=True)
    assert (tied_cent - tied_base).abs().max() > 1e-6
