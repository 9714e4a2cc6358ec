"""The mitigations inside Hugging Face Transformers' Trainer, for any causal LM.

    pip install -e ".[hf]"

    args = StableTrainingArguments(output_dir="out", mitigation="mu-centering+orthograd")
    StableTrainer(model=model, args=args, train_dataset=data).train()

All math is nanoGPT.mitigations, the module the nanoGPT training loop uses; this file only wires
it into the Trainer. The method names and '+' combination rules are nanoGPT's (parse_method).

- Loss (baseline, z-loss, mu-loss, StableMax): the Trainer's ``compute_loss_func`` hook, fed the
  model's logits and labels shifted by one (causal LM, -100 ignored). The loss function reads the
  output embedding E through the model's own ``get_output_embeddings()``.
- ⊥Grad: ``create_optimizer`` wraps whatever optimizer ``args.optim`` built (AdamW, SGD,
  Adafactor, ...) in OrthoGrad. The Trainer clips before ``optimizer.step()``, so clipping comes
  before the projection, which keeps every tensor's norm and hence the clipped total norm.
- mu-centering: a callback on ``on_optimizer_step``, which the Trainer runs right after
  ``optimizer.step()`` and before the scheduler step and ``zero_grad``.

Gradient accumulation and data parallelism: Hugging Face passes ``num_items_in_batch``, the number
of predicted tokens in the whole accumulated batch (over all processes). Each micro-batch returns
its mean objective times n/N (its own n kept tokens out of those N), so the accumulated gradient is
that of one big batch: token-weighted mean CE (and z-loss) over all N tokens, plus γ‖μ‖² once.
The Trainer then treats the loss as already scaled for accumulation. Hugging Face counts the
tokens of ``labels[..., 1:]`` only for models whose loss_type it maps to a causal-LM loss (not,
e.g., GPT2LMHeadModel); since our loss always shifts, the trainer tells it so.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

try:
    from transformers import Trainer, TrainerCallback, TrainingArguments
except ImportError as e:  # the extra is optional: say how to get it
    raise ImportError('nanoGPT.hf needs Hugging Face Transformers: pip install -e ".[hf]"') from e

from .data import TokenStream
from .mitigations import IGNORE_INDEX, METHODS, MethodError, Mitigation, OrthoGrad, mu_center_, softmax_cross_entropy_and_lse

_NEEDS_E = ("mu-loss", "mu-centering")  # act on the output embedding matrix itself


class MitigationNotApplicable(ValueError):
    """A mitigation that cannot act on this model or setup; the message says why and what to do."""


@dataclass
class StableTrainingArguments(TrainingArguments):
    """TrainingArguments plus the mitigation switches (all also command-line flags via HfArgumentParser)."""

    mitigation: str = field(default="baseline", metadata={
        "help": f"one of {', '.join(METHODS)}, or several joined with '+' (e.g. mu-centering+orthograd)"})
    mitigation_gamma: float = field(default=0.0, metadata={
        "help": "strength γ of z-loss (e.g. 1e-4) or mu-loss (e.g. 1e-1); must be 0 for the other methods"})
    orthograd_skip: list[str] = field(default_factory=list, metadata={
        "help": "parameter-name substrings whose gradients ⊥Grad leaves untouched, e.g. bias norm"})
    allow_tied_embeddings: bool = field(default=False, metadata={
        "help": "let mu-loss / mu-centering act on an output embedding shared with the input embedding"})

    def __post_init__(self):
        super().__post_init__()
        mitigation = self.parsed_mitigation()  # bad specs fail here, before any model is built
        if self.orthograd_skip and not mitigation.orthograd:
            raise MethodError(f"orthograd_skip={self.orthograd_skip} is set but mitigation "
                              f"{mitigation.name!r} does not use orthograd")

    def parsed_mitigation(self) -> Mitigation:
        return Mitigation.from_spec(self.mitigation, self.mitigation_gamma)


# ----------------------------------------------------------------------------- the model's matrices
def output_embedding(model: nn.Module) -> torch.Tensor:
    """E, the [V, d] LM head weight, found by the model's own get_output_embeddings()."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise MitigationNotApplicable(
            f"{type(model).__name__} has no output embedding (get_output_embeddings() gave {head!r}); "
            "the mitigations act on a causal language model's LM head: load it with AutoModelForCausalLM")
    return head.weight


def embeddings_tied(model: nn.Module) -> bool:
    """Whether E is the input embedding matrix (the same storage, as weight tying makes it)."""
    inp = model.get_input_embeddings()
    return inp is not None and inp.weight.data_ptr() == output_embedding(model).data_ptr()


def untie_output_embeddings(model: nn.Module) -> None:
    """Give the LM head its own copy of the tied matrix (then create the optimizer), so that
    mu-loss / mu-centering leave the input embeddings alone; saved checkpoints stay untied."""
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone())
    # A config object can be shared by several models (built from one config): untie only this one's.
    model.config = copy.deepcopy(model.config)
    model.config.tie_word_embeddings = False


def check_applicable(model: nn.Module, mitigation: Mitigation, args: StableTrainingArguments,
                     sharded: bool) -> None:
    """Refuse, with the reason and the remedy, what the mitigation cannot do on this model."""
    name, E = type(model).__name__, output_embedding(model)
    on_E = [c for c in mitigation.components if c in _NEEDS_E]
    if on_E and embeddings_tied(model) and not args.allow_tied_embeddings:
        raise MitigationNotApplicable(
            f"{name} ties its output embedding to its input embedding, so {on_E[0]} would also shift every "
            "input token embedding (the published method is defined without tying). Untie it first "
            "(nanoGPT.hf.untie_output_embeddings(model), or build from a config with tie_word_embeddings=False), "
            "or set allow_tied_embeddings=True to apply it to the shared matrix anyway")
    if on_E and not E.requires_grad:
        raise MitigationNotApplicable(f"{name}: {on_E[0]} acts on the output embedding, which is frozen "
                                      "(requires_grad=False); train the LM head or choose another method")
    if sharded and (on_E or mitigation.orthograd):
        raise MitigationNotApplicable(
            f"{mitigation.name} needs whole parameters (the mean over vocabulary rows, per-tensor norms) but "
            "FSDP / DeepSpeed shard them; use DDP (torchrun) or z-loss / StableMax, which act on the logits")
    if args.n_gpu > 1:
        raise MitigationNotApplicable("StableTrainer does not support DataParallel (several GPUs in one "
                                      "process): launch one process per GPU with torchrun (DDP)")
    if args.label_smoothing_factor:
        raise MitigationNotApplicable("StableTrainer computes the loss itself and has no label smoothing: "
                                      "set label_smoothing_factor=0")
    names = [n for n, _ in model.named_parameters()]
    for s in args.orthograd_skip:
        if not any(s in n for n in names):
            raise MitigationNotApplicable(f"orthograd_skip {s!r} matches no parameter of {name}; "
                                          f"its names look like {', '.join(names[:4])}, ...")


# ----------------------------------------------------------------------------- trainer
class MuCenteringCallback(TrainerCallback):
    """E ← E − μ right after every optimizer step (on_optimizer_step follows optimizer.step())."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        mu_center_(output_embedding(model))


class StableTrainer(Trainer):
    """A Trainer for causal LMs that applies ``args.mitigation`` (see the module docstring).

    Logs ``ce`` (the cross-entropy of the model's own distribution: StableMax's for StableMax runs)
    and ``aux_loss`` (the z-loss / mu-loss term) next to ``loss``. ``eval_loss`` is that
    cross-entropy without the regulariser; StableMax runs also report ``eval_softmax_ce``.
    """

    def __init__(self, model: nn.Module | None = None, args: StableTrainingArguments | None = None, **kwargs):
        if not isinstance(args, StableTrainingArguments):
            raise TypeError(f"StableTrainer needs args=StableTrainingArguments(...), got {type(args).__name__}")
        if model is None:
            raise ValueError("StableTrainer needs model= (model_init is not supported: the mitigations are "
                             "checked against the model when the trainer is built)")
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("StableTrainer computes the loss itself; drop compute_loss_func")
        self.mitigation = args.parsed_mitigation()
        super().__init__(model=model, args=args, compute_loss_func=self._loss, **kwargs)
        check_applicable(self.model, self.mitigation, args, self.is_fsdp_enabled or self.is_deepspeed_enabled)
        # Hugging Face's token count for num_items_in_batch must cover labels[..., 1:], the targets
        # our loss predicts; a renamed switch in a future version must fail loudly, not miscount.
        if not hasattr(self, "_loss_shifts_labels"):
            raise RuntimeError("this transformers version has no Trainer._loss_shifts_labels; use the pinned one")
        self._loss_shifts_labels = True
        if self.mitigation.mu_centering:
            self.add_callback(MuCenteringCallback())
        self._sums: dict[str, torch.Tensor] = {}  # "train": Σw·(ce, aux, 1); "eval": Σw·(ce, softmax ce, 1)

    def _loss(self, outputs, labels: torch.Tensor | None, num_items_in_batch=None) -> torch.Tensor:
        if labels is None or num_items_in_batch is None:
            raise ValueError("StableTrainer needs `labels` in every batch (the input_ids, -100 where no target)")
        logits, targets = outputs["logits"][..., :-1, :], labels[..., 1:]
        parts = self.mitigation.loss(logits, targets, output_embedding(self.model))
        n = (targets != IGNORE_INDEX).sum()
        w = n / num_items_in_batch
        if self.model.training:
            loss, mode, logged = parts["loss"], "train", (parts["ce"], parts["aux"])
        else:  # evaluation reports the cross-entropy alone, and for StableMax also the softmax one
            softmax_ce = (softmax_cross_entropy_and_lse(logits.detach(), targets)[0]
                          if self.mitigation.stablemax else parts["ce"])
            loss, mode, logged = parts["ce"], "eval", (parts["ce"], softmax_ce)
        self._accumulate(mode, logged, w, n)
        # A micro-batch without targets carries no weight (its mean is 0 by convention).
        return torch.where(n > 0, loss * w, 0.0)

    def _accumulate(self, mode: str, values: Sequence[torch.Tensor], w: torch.Tensor, n: torch.Tensor) -> None:
        """Σ w·value and Σ w, kept on the device so that only logging reads them (one sync)."""
        x = torch.stack([*(v.detach().float() for v in values), torch.ones_like(w)]) * w
        x = torch.where(n > 0, x, 0.0)
        self._sums[mode] = self._sums[mode] + x if mode in self._sums else x

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not isinstance(optimizer, OrthoGrad):
            named = (model if model is not None else self.model).named_parameters()
            self.optimizer = self.mitigation.wrap_optimizer(optimizer, named, self.args.orthograd_skip)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "train" in self._sums:  # a training log, not the final summary
            ce, aux, w = self._sums.pop("train").tolist()
            if w > 0:
                logs = {**logs, "ce": ce / w, "aux_loss": aux / w}
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        self._sums.pop("eval", None)
        out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.mitigation.stablemax and "eval" in self._sums:
            _, softmax_ce, w = self._sums.pop("eval").tolist()
            if w > 0:
                out.metrics[f"{metric_key_prefix}_softmax_ce"] = softmax_ce / w
        return out


# ----------------------------------------------------------------------------- data
class TokenBlocks(torch.utils.data.Dataset):
    """A token array cut into consecutive blocks of seq_len for causal-LM training: every item is
    ``{"input_ids": block, "labels": block}`` (the loss shifts the labels itself)."""

    def __init__(self, tokens: np.ndarray | Sequence[int], seq_len: int):
        tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        n = len(tokens) // seq_len
        if n == 0:
            raise ValueError(f"{len(tokens)} tokens make no block of seq_len={seq_len}")
        self.blocks = tokens[:n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i].clone()}

    @classmethod
    def from_shards(cls, pattern: str | os.PathLike, seq_len: int, max_tokens: int | None = None,
                    vocab_size: int | None = None) -> "TokenBlocks":
        """Blocks of the first max_tokens tokens of llm.c-format shards (e.g. the embedded corpus)."""
        stream = TokenStream(pattern, vocab_size)
        return cls(stream.read(0, min(stream.n_tokens, max_tokens or stream.n_tokens)), seq_len)

