"""The candidate RoPE of scripts/benchmark_qk_rope.py (x·cos + swap(x)·sin over the whole head)
is the model's rotation, checked against the rotation written out pair by pair, so that the
GPU comparison of their speeds compares the same math (the candidate was slower and was not
adopted: results/benchmarks/issue4/qk_rope_h200.md)."""
from __future__ import annotations

import math

import pytest
import torch

from nanoGPT.model import SCALES, GPTConfig, Rotary
from scripts.benchmark_qk_rope import PairSwapRotary


def rotate_by_hand(x: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Pair (x[2i], x[2i+1]) of the first ``dim`` features at position t turned by t·θ^(−2i/dim)."""
    out = x.clone()
    for t in range(x.size(-2)):
        for i in range(dim // 2):
            a = t * theta ** (-2 * i / dim)
            x0, x1 = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = x0 * math.cos(a) - x1 * math.sin(a)
            out[..., t, 2 * i + 1] = x1 * math.cos(a) + x0 * math.sin(a)
    return out


@pytest.mark.parametrize("scale", [s for s in SCALES if s != "tiny"])
def test_candidate_rotates_like_the_model(scale):
    cfg = GPTConfig.from_scale(scale)
    T, D = 12, cfg.head_dim
    rotary = Rotary(D // 2, T, cfg.rope_theta)
    x = torch.randn(2, 3, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = rotate_by_hand(x, D // 2, cfg.rope_theta)
    candidate = PairSwapRotary(rotary, D)(x)
    torch.testing.assert_close(candidate, expected, rtol=0, atol=2e-6)  # the tables are float32
    torch.testing.assert_close(candidate, rotary(x), rtol=0, atol=1e-6)
    assert torch.equal(candidate[..., D // 2:], x[..., D // 2:])  # the second half is left alone


def test_candidate_gradient_is_the_inverse_rotation():
    cfg = GPTConfig.from_scale("16M")
    T, D = 9, cfg.head_dim
    rope = PairSwapRotary(Rotary(D // 2, T, cfg.rope_theta), D)
    x = torch.randn(1, 2, T, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 2, T, D, dtype=torch.float64)
    (grad,) = torch.autograd.grad(rope(x), x, g)
    # a rotation's adjoint is its inverse: the gradient turned forward again is the output gradient
    torch.testing.assert_close(rope(grad), g, rtol=0, atol=1e-6)
