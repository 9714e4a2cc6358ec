"""Reference formulas the tests share, written from the papers' definitions and never from the
code under test."""
from __future__ import annotations

import torch


def stablemax_s_ref(z: torch.Tensor) -> torch.Tensor:
    """StableMax's s(x) = x + 1 for x ≥ 0 and 1/(1 − x) for x < 0. The reciprocal only ever sees
    the non-positive values, so the branch torch.where discards holds no inf (autograd-safe)."""
    return torch.where(z >= 0, z + 1, 1 / (1 - torch.clamp(z, max=0)))
