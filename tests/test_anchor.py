"""The speed anchor (scripts/anchor_nanogpt.py) is the program PERFORMANCE.md measured, and
comparing tokens/s with it is fair: its FLOPs per token are within a few percent of ours."""
from __future__ import annotations

import pytest
import torch

from nanoGPT.model import GPT, GPTConfig, flops_per_token, get_scale
from scripts.anchor_nanogpt import ANCHOR_MICRO_BATCH, AnchorGPT

# PERFORMANCE.md's per-scale anchor table: "nanoGPT's parameter count" (its get_num_params,
# which leaves out the position embedding) and the micro-batch it was run at.
PUBLISHED = {"16M": (14.9, 32), "29M": (27.2, 32), "57M": (57.3, 16), "109M": (105.9, 16), "221M": (216.3, 8)}


def _anchor(scale: str) -> AnchorGPT:
    s = get_scale(scale)
    with torch.device("meta"):
        return AnchorGPT(s.n_layer, s.d_model, s.n_head)


@pytest.mark.parametrize("scale", list(PUBLISHED))
def test_anchor_is_the_measured_nanogpt(scale):
    model = _anchor(scale)
    params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # tied head counted once
    assert round(params / 1e6, 1) == PUBLISHED[scale][0]
    assert ANCHOR_MICRO_BATCH[scale] == PUBLISHED[scale][1]
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("scale", list(PUBLISHED))
def test_our_flops_per_token_are_within_4_percent_of_the_anchor(scale):
    """Both counted as nanoGPT does, from the built modules: 6 per matmul weight (the LM head
    once) plus 12·L·d·T for attention. Ours is never lower (SwiGLU's hidden size rounds up)."""
    s, T = get_scale(scale), 2048

    def per_token(model, embedding) -> float:
        matmul = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embedding)
        return 6 * matmul + 12 * s.n_layer * s.d_model * T

    anchor = _anchor(scale)
    anchor_flops = per_token(anchor, anchor.wpe.weight)  # the tied head is one parameter, counted once
    with torch.device("meta"):
        ours = GPT(GPTConfig.from_scale(scale))
    ours_flops = per_token(ours, ours.wte.weight)
    assert ours_flops == flops_per_token(GPTConfig.from_scale(scale), T)
    assert 1.0 <= ours_flops / anchor_flops < 1.04
