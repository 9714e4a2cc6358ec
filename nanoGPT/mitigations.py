"""The math of every mitigation, once.

Notation as in METHODS.md: logits ``z = h @ E.T`` with ``E`` the output embedding
(LM head weight, one row per vocabulary token), ``μ = mean_v E[v]``.

- z-loss:        L = CE + γ · mean_tokens(logsumexp(z)²)
- mu-loss:       L = CE + γ · μ·μ
- mu-centering:  after every optimizer step, E ← E − μ
- StableMax:     cross-entropy on log_stablemax(z) instead of log_softmax(z)
- ⊥Grad:         g ← g_⊥ · ‖g‖/‖g_⊥‖ with g_⊥ = g − (w·g)/(w·w) · w, then the base optimizer

Everything here is a plain function or a small class over tensors so that the nanoGPT
model, the training loop and other frameworks all share the same code.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

ORTHOGRAD_EPS = 1e-30  # as in the reference implementation
IGNORE_INDEX = -100    # the target of a position without one (PyTorch's and Hugging Face's convention)


# ----------------------------------------------------------------------------- StableMax
def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x ≥ 0 and 1 / (1 − x) for x < 0: positive, continuous, linear growth."""
    # Branch-free: relu(x) + 1/(1 − min(x, 0)) is x + 1 for x ≥ 0 and 1/(1 − x) below. Each
    # term sees only its own half-line, so neither can produce inf (1/(1−x) at x = 1) whose
    # masked gradient would turn into NaN, and it costs 4 elementwise passes instead of ~7.
    return torch.relu(x) + torch.reciprocal(1 - x.clamp(max=0))


def log_stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """log s(x), computed without forming s(x) for the negative branch: log s = −log(1 − x)."""
    return torch.where(x >= 0, torch.log1p(x.clamp(min=0)), -torch.log1p(-x.clamp(max=0)))


def stablemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(z.float())
    return s / s.sum(dim, keepdim=True)


def log_stablemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log StableMax in float32. The normaliser Σ s(z_j) is a sum of positive terms, so unlike
    softmax it needs no max-subtraction; float32 holds it to ~1e-7 relative for V = 50304."""
    z = z.float()
    return log_stablemax_s(z) - torch.log(stablemax_s(z).sum(dim, keepdim=True))


def stablemax_cross_entropy(z: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over tokens of −log_stablemax(z)[target]; z is [..., V], targets [...]."""
    z = z.reshape(-1, z.size(-1)).float()
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    safe = targets.clamp(min=0).unsqueeze(1)
    picked = log_stablemax_s(z.gather(1, safe).squeeze(1))
    log_norm = torch.log(stablemax_s(z).sum(1))
    return _mean_kept(log_norm - picked, keep)


def _mean_kept(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of x over the kept positions; 0 (not NaN) when none is kept."""
    return torch.where(keep, x, 0).sum() / keep.sum().clamp(min=1)


class StableMax(nn.Module):
    """Drop-in for nn.Softmax: StableMax(z)_i = s(z_i) / Σ_j s(z_j) along ``dim`` (float32 out)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return stablemax(z, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogStableMax(StableMax):
    """Drop-in for nn.LogSoftmax: log StableMax along ``dim``, e.g. for nn.NLLLoss (float32 out)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return log_stablemax(z, self.dim)


class StableMaxCrossEntropyLoss(nn.Module):
    """Mean over the targets ≠ ignore_index of −log_stablemax(z)[target].

    Logits are [..., V] with the class dimension *last* (as language-model logits), unlike
    nn.CrossEntropyLoss's [N, C, ...]; targets are the matching [...] class ids.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return stablemax_cross_entropy(logits, targets, self.ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


# ----------------------------------------------------------------------------- softmax terms
def softmax_cross_entropy_and_lse(z: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain CE and the per-token log-partition log Z = logsumexp(z) of the kept tokens,
    sharing one logsumexp."""
    z = z.reshape(-1, z.size(-1)).float()
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    lse = torch.logsumexp(z, dim=-1)
    picked = z.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return _mean_kept(lse - picked, keep), lse[keep]


def z_loss(lse: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ · mean over tokens of (log Z)² (0 for no tokens)."""
    return gamma * lse.float().pow(2).sum() / max(lse.numel(), 1)


def output_mean(E: torch.Tensor) -> torch.Tensor:
    """μ = mean over the V rows of the output embedding, a d-vector."""
    return E.float().mean(dim=0)


def mu_loss(E: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ · μ·μ."""
    mu = output_mean(E)
    return gamma * torch.dot(mu, mu)


@torch.no_grad()
def mu_center_(E: torch.Tensor) -> None:
    """E ← E − μ in place: every row minus the mean row, so the rows sum to zero."""
    E.sub_(E.mean(dim=0, keepdim=True))


_compiled: dict[tuple, object] = {}


def compiled(fn, **inductor_options):
    """fn under torch.compile, built once per process and set of inductor options: the GPU path
    of the per-step math (the loss head's chunks, ⊥Grad, mu-centering), which fuses its many
    small kernels into few. Its shapes are fixed for a run, so the graphs are static (dynamic=False)."""
    key = (fn.__name__, *sorted(inductor_options.items()))
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, dynamic=False, options=inductor_options or None)
    return _compiled[key]


# ----------------------------------------------------------------------------- ⊥Grad
@torch.no_grad()
def orthogonalize_gradients_(params: Iterable[torch.Tensor], eps: float = ORTHOGRAD_EPS) -> None:
    """Replace each gradient g of w by its component orthogonal to w, rescaled to ‖g‖.

    Batched with torch._foreach_* so the cost is a handful of kernels, not several per tensor.
    Reductions run in float32 (w·w of a large matrix overflows nothing, but bf16 would lose it).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    ws = [p.detach().float().reshape(-1) for p in params]
    gs = [p.grad.float().reshape(-1) for p in params]
    dots = torch.stack([torch.dot(w, g) for w, g in zip(ws, gs)])
    w_sq = torch.stack(torch._foreach_norm(ws)).pow(2)
    g_norm = torch.stack(torch._foreach_norm(gs))
    coef = dots / (w_sq + eps)
    g_perp = torch._foreach_sub(gs, torch._foreach_mul(ws, list(coef.unbind())))
    perp_norm = torch.stack(torch._foreach_norm(g_perp))
    scale = g_norm / (perp_norm + eps)
    torch._foreach_mul_(g_perp, list(scale.unbind()))
    torch._foreach_copy_([p.grad for p in params], [g.view_as(p.grad) for p, g in zip(params, g_perp)])


class OrthoGrad(torch.optim.Optimizer):
    """⊥Grad around any torch optimizer: project the gradients, then call the base step.

    The wrapper shares the base optimizer's param_groups and state, so learning-rate
    schedules that write ``group["lr"]`` and checkpointing through ``state_dict`` act on
    the base optimizer directly. Parameters whose name contains one of ``skip`` (given with
    ``named_parameters``) keep their raw gradient, e.g. ``skip=("ln", "norm")`` for gains.
    """

    def __init__(self, base: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                 skip: Iterable[str] = (), eps: float = ORTHOGRAD_EPS, compile: bool = False):
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"OrthoGrad wraps a torch.optim.Optimizer, got {type(base).__name__}")
        skip = tuple(skip)
        if skip and named_parameters is None:
            raise ValueError("OrthoGrad: skipping parameters by name needs named_parameters")
        self.base = base
        self.eps = eps
        # Compiled, ⊥Grad is several small kernels per parameter tensor; combo kernels launch
        # them together. On an H200 its overhead at 221M went from +6.2% to +1.3-2.2% of the
        # step, and to at most +1.5% at the other scales (results/benchmarks/README.md, calls 10-12).
        self._orthogonalize = (compiled(orthogonalize_gradients_, combo_kernels=True) if compile
                               else orthogonalize_gradients_)
        self.skip_names = skip
        self._skipped = {id(p) for n, p in (named_parameters or ()) if any(s in n for s in skip)}
        # Not calling Optimizer.__init__: it would rebuild the groups. Share the base's instead.
        self.defaults = base.defaults
        self.param_groups = base.param_groups
        self.state = base.state
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()  # as Optimizer.__init__ does: step hooks registered on the wrapper run

    def projected_parameters(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if id(p) not in self._skipped]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._orthogonalize(self.projected_parameters(), self.eps)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base.load_state_dict(state_dict)
        # torch's load_state_dict gives the base new param_groups/state objects: share those.
        self.param_groups, self.state = self.base.param_groups, self.base.state

    def __repr__(self) -> str:
        return f"OrthoGrad(skip={self.skip_names}, base={self.base!r})"


# ----------------------------------------------------------------------------- methods as data
@dataclass(frozen=True)
class Method:
    """One mitigation: its name in configs, its letter in run names, and what it needs."""
    name: str
    letter: str
    uses_gamma: bool
    description: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", "A", False, "plain softmax cross-entropy"),
    Method("z-loss", "Z", True, "CE + γ·mean(logsumexp(z)²)"),
    Method("mu-loss", "E", True, "CE + γ·‖μ‖², μ the mean output embedding"),
    Method("mu-centering", "R", False, "E ← E − μ after every optimizer step"),
    Method("stablemax", "S", False, "cross-entropy on log-StableMax instead of log-softmax"),
    Method("orthograd", "O", False, "⊥Grad: gradient orthogonal to the weights, norm kept, around AdamW"),
)}

# Combinations (joined with "+", e.g. "mu-centering+orthograd"). The three logit-divergence
# mitigations are alternatives the experiments compare, so at most one of them; StableMax
# replaces softmax, so it cannot carry z-loss (a softmax-normaliser penalty) nor mu-centering
# (which is exact only because softmax is invariant to a shift of all logits; StableMax is
# not). ⊥Grad changes only the optimizer and combines with everything.
_EXCLUSIVE = ("z-loss", "mu-loss", "mu-centering")
_INCOMPATIBLE = {frozenset({"stablemax", "z-loss"}): "z-loss penalises the softmax normaliser logsumexp(z), which a StableMax run does not use",
                 frozenset({"stablemax", "mu-centering"}): "mu-centering relies on softmax being invariant to shifting all logits; StableMax is not"}


class MethodError(ValueError):
    """A bad method spec or strength; ``key`` says which config key ('name' or 'gamma')."""

    def __init__(self, message: str, key: str = "name"):
        super().__init__(message)
        self.key = key


def parse_method(spec: str) -> tuple[str, ...]:
    """'mu-centering+orthograd' -> ('mu-centering', 'orthograd'); clear errors for the rest."""
    parts = tuple(p.strip() for p in spec.split("+"))
    for p in parts:
        if p not in METHODS:
            raise MethodError(f"unknown method {p!r}; known: {', '.join(METHODS)} (combine with '+')")
    if len(set(parts)) != len(parts):
        raise MethodError(f"method {spec!r} names a component twice")
    if "baseline" in parts and len(parts) > 1:
        raise MethodError(f"method {spec!r}: 'baseline' means no mitigation and cannot be combined")
    exclusive = [p for p in parts if p in _EXCLUSIVE]
    if len(exclusive) > 1:
        raise MethodError(f"method {spec!r}: choose one of {', '.join(_EXCLUSIVE)} per run (they are the alternatives being compared)")
    for pair, why in _INCOMPATIBLE.items():
        if pair <= set(parts):
            raise MethodError(f"method {spec!r}: {' and '.join(sorted(pair))} cannot be combined: {why}")
    order = list(METHODS)
    return tuple(sorted(parts, key=order.index))


@dataclass(frozen=True)
class Mitigation:
    """What a (possibly combined) method asks of the model and the training loop."""
    components: tuple[str, ...]
    gamma: float = 0.0

    @classmethod
    def from_spec(cls, spec: str, gamma: float) -> "Mitigation":
        components = parse_method(spec)
        if any(METHODS[c].uses_gamma for c in components):
            if not gamma > 0:
                raise MethodError(f"method {spec!r} needs a strength gamma > 0, got {gamma}", key="gamma")
        elif gamma != 0:
            raise MethodError(f"method {spec!r} has no strength: set gamma = 0 (got {gamma})", key="gamma")
        return cls(components, float(gamma))

    @property
    def name(self) -> str:
        return "+".join(self.components)

    @property
    def letters(self) -> str:
        return "".join(METHODS[c].letter for c in self.components)

    @property
    def stablemax(self) -> bool:
        return "stablemax" in self.components

    @property
    def orthograd(self) -> bool:
        return "orthograd" in self.components

    @property
    def mu_centering(self) -> bool:
        return "mu-centering" in self.components

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, E: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training objective and its parts: ``loss`` (optimised), ``ce`` (the plain cross-entropy
        of the model's own output distribution), ``aux`` (the regulariser), ``lse`` (per-token log Z
        of the softmax, a diagnostic; for StableMax runs also computed, detached)."""
        if self.stablemax:
            ce = stablemax_cross_entropy(logits, targets)
            lse = torch.logsumexp(logits.detach().float(), dim=-1).reshape(-1)[targets.reshape(-1) != IGNORE_INDEX]
        else:
            ce, lse = softmax_cross_entropy_and_lse(logits, targets)
        if "z-loss" in self.components:
            aux = z_loss(lse, self.gamma)
        else:
            aux = self.embedding_penalty(E)
            if aux is None:
                aux = torch.zeros((), device=logits.device)
        return {"loss": ce + aux, "ce": ce, "aux": aux, "lse": lse.detach()}

    def embedding_penalty(self, E: torch.Tensor) -> torch.Tensor | None:
        """The regulariser that acts on the output embedding itself (mu-loss), None for the rest."""
        return mu_loss(E, self.gamma) if "mu-loss" in self.components else None

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, named_parameters, skip: Iterable[str] = (),
                       compile: bool = False) -> torch.optim.Optimizer:
        return OrthoGrad(optimizer, named_parameters, skip, compile=compile) if self.orthograd else optimizer

    def after_step(self, E: torch.Tensor, compile: bool = False) -> None:
        if self.mu_centering:
            (compiled(mu_center_) if compile else mu_center_)(E)
