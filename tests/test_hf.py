"""The Hugging Face integration (nanoGPT/hf.py) and the StableMax nn.Modules, on tiny random models
built from configs (nothing from the hub). Every expected value is computed here, in float64, from
the formulas in METHODS.md, not by the code under test."""
from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2Model, GPTNeoXConfig, HfArgumentParser,
                          LlamaConfig, MistralConfig, Qwen2Config, TrainerCallback)
from transformers.optimization import Adafactor

import nanoGPT.config
import nanoGPT.hf as hf
import nanoGPT.mitigations as mit
import nanoGPT.train
from formulas import stablemax_s_ref
from nanoGPT.data import EOT, GPT2_VOCAB, TokenStream, gpt2_tokenizer
from nanoGPT.hf import (MitigationNotApplicable, StableTrainer, StableTrainingArguments, TokenBlocks,
                        embeddings_tied, output_embedding, untie_output_embeddings)
from nanoGPT.mitigations import LogStableMax, MethodError, OrthoGrad, StableMax, StableMaxCrossEntropyLoss

ROOT = Path(__file__).resolve().parents[1]
V, T = 96, 16
FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gpt-neox")
LOSS_METHODS = {"baseline": 0.0, "z-loss": 0.05, "mu-loss": 0.5, "stablemax": 0.0}
transformers.logging.set_verbosity_error()


# ----------------------------------------------------------------------------- tiny models and data
def config(family: str, tied: bool = False, vocab: int = V, d: int = 32):
    common = dict(vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    decoder = dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=64, **common)
    return {
        "gpt2": lambda: GPT2Config(n_embd=d, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, **common),
        "llama": lambda: LlamaConfig(num_key_value_heads=1, **decoder),
        "mistral": lambda: MistralConfig(num_key_value_heads=1, **decoder),
        "qwen2": lambda: Qwen2Config(num_key_value_heads=1, **decoder),
        "gpt-neox": lambda: GPTNeoXConfig(**decoder),
    }[family]()


def tiny(family: str = "gpt2", tied: bool = False, shift_E: float = 0.0, scale_E: float = 1.0, **kw):
    """A random model (seed 0, dropout 0). E ← scale_E·E + shift_E: logits of order one (where
    StableMax and softmax differ) and a mean row μ that is not tiny."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(family, tied, **kw))
    with torch.no_grad():
        model.lm_head.weight.mul_(scale_E).add_(shift_E)
    return model


def rows(n: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Token rows whose labels keep uneven numbers of targets, one row none at all."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, V, (T,), generator=g)
        labels = ids.clone()
        labels[:[0, T // 2, T, 3][i % 4]] = -100  # keeps 16, 8, 0 and 13 label positions
        out.append({"input_ids": ids, "labels": labels})
    return out


def stack(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}


def targs(tmp_path, **kw) -> StableTrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no",
                disable_tqdm=True, logging_steps=1, per_device_train_batch_size=2, max_steps=2,
                learning_rate=1e-2, seed=0, dataloader_pin_memory=False)
    return StableTrainingArguments(**{**base, **kw})


def trainer(model, tmp_path, data=None, **kw) -> StableTrainer:
    return StableTrainer(model=model, args=targs(tmp_path, **kw), train_dataset=data or rows(), eval_dataset=rows())


# ----------------------------------------------------------------------------- float64 references
def reference_terms(model, batch: dict) -> dict[str, torch.Tensor]:
    """CE, mean log²Z, StableMax CE over the kept (shifted) targets, and μ·μ of the LM head."""
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"]).logits.double()[:, :-1]
    y = batch["labels"][:, 1:]
    z, y = z[y != -100], y[y != -100]
    picked = z[torch.arange(len(y)), y]
    lse = torch.log(torch.exp(z).sum(-1))
    mu = model.lm_head.weight.detach().double().mean(0)
    return {"ce": (lse - picked).mean(), "lse_sq": (lse ** 2).mean(), "mu_sq": mu @ mu,
            "stable_ce": -torch.log(stablemax_s_ref(picked) / stablemax_s_ref(z).sum(-1)).mean()}


def reference_loss(terms: dict, method: str, gamma: float) -> torch.Tensor:
    return {"baseline": terms["ce"], "z-loss": terms["ce"] + gamma * terms["lse_sq"],
            "mu-loss": terms["ce"] + gamma * terms["mu_sq"], "stablemax": terms["stable_ce"]}[method]


def orthogonal64(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    w, g = w.double().flatten(), g.double().flatten()
    perp = g - (w @ g) / (w @ w) * w
    return perp * g.norm() / perp.norm()


def n_targets(batch: dict) -> torch.Tensor:
    return (batch["labels"][:, 1:] != -100).sum()


# ----------------------------------------------------------------------------- StableMax modules
def test_stablemax_modules_match_the_formula():
    z = torch.tensor([[3.0, -2.0, 0.0, 0.5], [-40.0, 7.0, 1.0, -0.25]], requires_grad=True)
    s = stablemax_s_ref(z.detach().double())
    p = s / s.sum(-1, keepdim=True)
    assert torch.allclose(StableMax()(z).double(), p, rtol=1e-6)
    assert torch.allclose(LogStableMax(dim=-1)(z).double(), p.log(), rtol=1e-6)
    targets = torch.tensor([1, -100])
    loss = StableMaxCrossEntropyLoss()(z, targets)
    assert torch.allclose(loss.double(), -p[0, 1].log(), rtol=1e-6)
    loss.backward()
    assert torch.all(z.grad[1] == 0) and torch.all(z.grad[0] != 0)  # the ignored row gets no gradient
    # Unlike softmax, StableMax does not saturate: a logit 200 ahead still leaves the rest mass.
    assert StableMax()(torch.tensor([200.0, 0.0]))[1].item() == pytest.approx(1 / 202, rel=1e-6)
    assert torch.softmax(torch.tensor([200.0, 0.0]), -1)[1].item() < 1e-80


# ----------------------------------------------------------------------------- the loss of every flag
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_of_each_flag_is_the_formula(family, tmp_path):
    model = tiny(family, shift_E=0.3, scale_E=20)
    assert output_embedding(model) is model.lm_head.weight  # found by get_output_embeddings()
    batch = stack(rows())
    terms = reference_terms(model, batch)
    assert terms["mu_sq"] > 1 and terms["lse_sq"] > 1  # the regularisers are not negligible here
    for method, gamma in LOSS_METHODS.items():
        tr = trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma)
        model.train()
        loss = tr.compute_loss(model, dict(batch), num_items_in_batch=n_targets(batch))
        assert loss.item() == pytest.approx(reference_loss(terms, method, gamma).item(), rel=1e-5), method
    assert not torch.isclose(terms["stable_ce"], terms["ce"], rtol=1e-2)  # the flags really differ


@pytest.mark.parametrize("method", ["z-loss", "mu-loss"])
def test_gradient_accumulation_equals_one_big_batch(method, tmp_path):
    """Micro-batches with uneven target counts (one with none) and the step of one whole batch:
    same update, and the logged loss is the whole batch's objective, CE token-weighted and γ‖μ‖² once."""
    gamma = LOSS_METHODS[method]
    terms = reference_terms(tiny(shift_E=0.3), stack(rows()))
    weights = []
    for bs, ga in [(4, 1), (2, 2), (1, 4)]:
        model = tiny(shift_E=0.3)
        tr = trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma, per_device_train_batch_size=bs,
                     gradient_accumulation_steps=ga, max_steps=1, optim="sgd", learning_rate=0.1, max_grad_norm=0.0)
        tr.train()
        log = tr.state.log_history[0]
        assert log["loss"] == pytest.approx(reference_loss(terms, method, gamma).item(), rel=1e-5)
        assert log["ce"] == pytest.approx(terms["ce"].item(), rel=1e-5)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in tiny(shift_E=0.3).parameters()]))
    for w in weights[1:]:
        torch.testing.assert_close(w, weights[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the update of every flag
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", list(mit.METHODS))
def test_trainer_runs_each_mitigation(method, arch, tmp_path):
    gamma = LOSS_METHODS.get(method, 0.0)
    model = tiny(arch, shift_E=0.3)
    E0 = model.lm_head.weight.detach().clone()
    tr = trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma, gradient_accumulation_steps=2, max_steps=3)
    tr.train()
    metrics = tr.evaluate()
    logs = [h for h in tr.state.log_history if "ce" in h]
    assert len(logs) == 3 and all(np.isfinite([h["loss"], h["ce"], h["aux_loss"]]).all() for h in logs)
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + h["aux_loss"], rel=1e-5)
        assert (h["aux_loss"] > 0) == (gamma > 0)
    assert not torch.allclose(model.lm_head.weight, E0)
    assert np.isfinite(metrics["eval_loss"]) and ("eval_softmax_ce" in metrics) == (method == "stablemax")
    assert isinstance(tr.optimizer.optimizer, OrthoGrad) == (method == "orthograd")  # inside accelerate's wrapper
    mean_row = model.lm_head.weight.mean(0).abs().max().item()
    assert (mean_row < 1e-6) == (method == "mu-centering"), mean_row


def test_mu_centering_is_the_baseline_update_then_centred(tmp_path):
    """Softmax ignores a shift of all logits, so mu-centering leaves every gradient as it is: after
    k SGD steps E equals the baseline run's E minus its mean row, and all else is identical (AdamW
    too in exact arithmetic, but its g/√v amplifies float noise in near-zero gradients)."""
    runs = {}
    for method in ("baseline", "mu-centering"):
        model = tiny(shift_E=0.3)
        trainer(model, tmp_path, mitigation=method, max_steps=3, optim="sgd", learning_rate=0.1).train()
        runs[method] = dict(model.named_parameters())
    E = runs["baseline"]["lm_head.weight"].detach().double()
    torch.testing.assert_close(runs["mu-centering"]["lm_head.weight"].double(), E - E.mean(0), atol=2e-6, rtol=1e-5)
    assert runs["mu-centering"]["lm_head.weight"].mean(0).abs().max() < 1e-6 < E.mean(0).abs().max()
    for name, p in runs["baseline"].items():
        if name != "lm_head.weight":
            torch.testing.assert_close(runs["mu-centering"][name], p, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("optim,base_cls", [("adamw_torch", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                            ("adafactor", Adafactor)])
def test_orthograd_around_any_optimizer_and_skipping_by_name(optim, base_cls, tmp_path):
    """The base optimizer steps on g_⊥ (⟂ w, norm ‖g‖) of the clipped gradient g; parameters named
    by orthograd_skip reach it with their gradient untouched."""
    model = tiny("llama")
    skip = ["norm"]
    tr = trainer(model, tmp_path, mitigation="orthograd", orthograd_skip=skip, optim=optim, max_steps=1,
                 per_device_train_batch_size=4, max_grad_norm=0.5)
    opt = tr.create_optimizer()
    assert isinstance(opt, OrthoGrad) and type(opt.base) is base_cls
    names = {id(p): n for n, p in model.named_parameters()}
    before, seen = {}, {}

    class Snapshot(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            before.update({n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()})

    tr.add_callback(Snapshot())
    opt.base.register_step_pre_hook(lambda o, a, k: seen.update(
        {names[id(p)]: p.grad.clone() for g in o.param_groups for p in g["params"]}))
    tr.train()
    skipped = [n for n in before if "norm" in n]
    assert skipped and len(skipped) < len(before)
    for name, (w, g) in before.items():
        if name in skipped:
            assert torch.equal(seen[name], g), name
            continue
        got = seen[name].double().flatten()
        torch.testing.assert_close(got, orthogonal64(w, g), rtol=1e-4, atol=1e-5 * g.abs().max().item())
        assert abs(got @ w.double().flatten()) < 1e-5 * got.norm() * w.norm()
        assert got.norm().item() == pytest.approx(g.norm().item(), rel=1e-5)
        assert not torch.allclose(got, g.double().flatten())
    if optim == "sgd":  # and the update is exactly −lr·(what the base saw)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), before[name][0] - 1e-2 * seen[name], rtol=1e-5, atol=1e-7)


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path):
    """OrthoGrad keeps its state in the base optimizer, which the Trainer saves and restores."""
    def run(resume: bool):
        model = tiny("llama")
        tr = trainer(model, tmp_path, data=rows(8), mitigation="mu-centering+orthograd", max_steps=4,
                     save_strategy="steps", save_steps=2)
        tr.train(resume_from_checkpoint=resume or None)
        return model, tr

    straight, _ = run(False)
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    resumed, tr = run(True)
    assert tr.state.global_step == 4 and isinstance(tr.optimizer.optimizer, OrthoGrad)
    assert tr.optimizer.optimizer.state is tr.optimizer.optimizer.base.state and tr.optimizer.optimizer.state
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- refusals and arguments
@pytest.mark.parametrize("method,gamma", [("mu-centering", 0.0), ("mu-loss", 0.1)])
def test_tied_embeddings_are_refused_unless_allowed_or_untied(method, gamma, tmp_path):
    model = tiny("gpt2", tied=True)
    assert embeddings_tied(model)
    with pytest.raises(MitigationNotApplicable, match="GPT2LMHeadModel ties its output embedding") as e:
        trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma)
    assert "untie_output_embeddings" in str(e.value) and "allow_tied_embeddings=True" in str(e.value)
    trainer(model, tmp_path, mitigation="z-loss", mitigation_gamma=1e-4)  # acts on logits only: accepted
    trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma, allow_tied_embeddings=True).train()
    assert embeddings_tied(model)
    shared_config = model.config  # e.g. the config another model was built from too
    untie_output_embeddings(model)
    assert not embeddings_tied(model) and not model.config.tie_word_embeddings
    assert shared_config.tie_word_embeddings  # untying this model changed no other model's config
    torch.testing.assert_close(model.lm_head.weight, model.transformer.wte.weight)
    trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma).train()
    assert not torch.allclose(model.lm_head.weight, model.transformer.wte.weight)


def test_tied_mu_centering_when_allowed_centres_the_shared_matrix(tmp_path):
    model = tiny("llama", tied=True, shift_E=0.3)
    trainer(model, tmp_path, mitigation="mu-centering", allow_tied_embeddings=True).train()
    assert model.get_input_embeddings().weight.mean(0).abs().max() < 1e-6


def test_other_refusals_name_the_problem(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(MitigationNotApplicable, match="GPT2Model has no output embedding.*AutoModelForCausalLM"):
        StableTrainer(model=GPT2Model(config("gpt2")), args=targs(tmp_path))
    frozen = tiny()
    frozen.lm_head.weight.requires_grad_(False)
    with pytest.raises(MitigationNotApplicable, match="frozen"):
        trainer(frozen, tmp_path, mitigation="mu-centering")
    with pytest.raises(MitigationNotApplicable, match="'LayerNorm' matches no parameter of LlamaForCausalLM"):
        trainer(tiny("llama"), tmp_path, mitigation="orthograd", orthograd_skip=["LayerNorm"])
    with pytest.raises(MitigationNotApplicable, match="label_smoothing_factor"):
        trainer(tiny(), tmp_path, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="computes the loss itself"):
        StableTrainer(model=tiny(), args=targs(tmp_path), compute_loss_func=lambda *a, **k: 0)
    with pytest.raises(TypeError, match="StableTrainingArguments"):
        StableTrainer(model=tiny(), args=transformers.TrainingArguments(output_dir=str(tmp_path)))


@pytest.mark.parametrize("spec,gamma,message", [
    ("z-loss+mu-loss", 0.1, "choose one of"),
    ("stablemax+mu-centering", 0.0, "cannot be combined"),
    ("z-loss", 0.0, "needs a strength gamma > 0"),
    ("orthograd", 0.1, "has no strength"),
    ("zloss", 0.0, "unknown method 'zloss'"),
])
def test_bad_specs_fail_when_the_arguments_are_built(spec, gamma, message, tmp_path):
    with pytest.raises(MethodError, match=message):
        targs(tmp_path, mitigation=spec, mitigation_gamma=gamma)


def test_arguments_are_command_line_flags(tmp_path):
    (args,) = HfArgumentParser(StableTrainingArguments).parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--mitigation", "mu-centering+orthograd",
        "--orthograd_skip", "bias", "norm", "--allow_tied_embeddings"])
    assert (args.mitigation, args.orthograd_skip, args.allow_tied_embeddings) == ("mu-centering+orthograd", ["bias", "norm"], True)
    assert args.parsed_mitigation().components == ("mu-centering", "orthograd")
    with pytest.raises(MethodError, match="does not use orthograd"):
        targs(tmp_path, mitigation="z-loss", mitigation_gamma=1e-4, orthograd_skip=["bias"])


# ----------------------------------------------------------------------------- one source of math
def test_hf_and_nanogpt_share_the_mitigation_code(monkeypatch, tmp_path):
    assert hf.Mitigation is mit.Mitigation is nanoGPT.config.Mitigation
    assert hf.OrthoGrad is mit.OrthoGrad and hf.mu_center_ is mit.mu_center_
    assert hf.softmax_cross_entropy_and_lse is mit.softmax_cross_entropy_and_lse
    assert nanoGPT.train.output_mean is mit.output_mean
    # The HF loss goes through the very functions Mitigation.loss (the nanoGPT objective) calls.
    calls = []
    for name in ("softmax_cross_entropy_and_lse", "z_loss", "mu_loss", "stablemax_cross_entropy"):
        original = getattr(mit, name)
        monkeypatch.setattr(mit, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model, batch = tiny(), stack(rows())
    for method, gamma in LOSS_METHODS.items():
        trainer(model, tmp_path, mitigation=method, mitigation_gamma=gamma).compute_loss(
            model, dict(batch), num_items_in_batch=n_targets(batch))
    assert set(calls) == {"softmax_cross_entropy_and_lse", "z_loss", "mu_loss", "stablemax_cross_entropy"}


def test_hf_module_has_no_math_of_its_own():
    """Only counting and weighting: no normaliser, log, power, mean or norm is computed in hf.py."""
    math = {"logsumexp", "log_softmax", "softmax", "cross_entropy", "nll_loss", "exp", "log", "log1p",
            "reciprocal", "mean", "pow", "dot", "norm", "sub_", "clamp", "relu", "matmul", "square"}
    tree = ast.parse((ROOT / "nanoGPT/hf.py").read_text())
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    is_super = lambda f: isinstance(f.value, ast.Call) and getattr(f.value.func, "id", "") == "super"  # noqa: E731
    called = {f.attr for f in calls if not is_super(f)}  # Trainer.log is logging, not a logarithm
    assert called & math == set()
    assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(tree))


# ----------------------------------------------------------------------------- data and examples
def test_token_blocks_from_shards(shards):
    stream = TokenStream(shards["val"])
    blocks = TokenBlocks.from_shards(shards["val"], seq_len=8, max_tokens=100)
    assert len(blocks) == 12
    item = blocks[3]
    assert torch.equal(item["input_ids"], torch.from_numpy(stream.read(24, 8)))
    assert torch.equal(item["labels"], item["input_ids"]) and item["labels"] is not item["input_ids"]


def test_from_scratch_example_runs(shards):
    cmd = [sys.executable, str(ROOT / "examples/train_hf_from_scratch.py"), "--arch", "gpt2", "llama",
           "--mitigation", "mu-centering", "stablemax+orthograd", "--steps", "2", "--batch-size", "2",
           "--seq-len", "16", "--d-model", "16", "--layers", "1", "--val-tokens", "64", "--cpu",
           "--train", shards["train"], "--val", shards["val"]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line.split() for line in out.stdout.splitlines() if line.startswith(("gpt2 ", "llama "))]
    assert [(r[0], r[1]) for r in table] == [(a, m) for a in ("gpt2", "llama") for m in ("mu-centering", "stablemax+orthograd")]
    for r in table:
        assert all(np.isfinite(float(v)) for v in r[2:])
        assert (float(r[-1]) < 1e-6) == (r[1] == "mu-centering")  # |mu| column
        assert (r[5] != r[6]) == (r[1] == "stablemax+orthograd")  # StableMax and softmax CE differ


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_finetune_example_on_a_local_checkpoint(shards, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    tiny("gpt2", tied=True, vocab=GPT2_VOCAB, d=16).save_pretrained(ckpt)  # tied, as GPT-2's weights are
    finetune = load_example("finetune_hf_checkpoint").main
    argv = ["--checkpoint", str(ckpt), "--train", shards["train"], "--val", shards["val"], "--seq_len", "16",
            "--max_train_tokens", "256", "--val_tokens", "64", "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--mitigation", "mu-centering",
            "--output_dir", str(tmp_path / "ft"), "--disable_tqdm", "true"]
    with pytest.raises(SystemExit, match="ties its output embedding"):
        finetune(argv)
    assert finetune(argv + ["--untie_embeddings"]) == 0
    assert "with mu-centering: eval loss" in capsys.readouterr().out
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft", local_files_only=True)
    assert not embeddings_tied(tuned) and tuned.lm_head.weight.mean(0).abs().max() < 1e-6


def test_finetune_retokenises_with_the_checkpoint_tokenizer(shards):
    """With GPT-2's own BPE as 'the checkpoint's tokenizer', re-tokenising gives back the shard."""
    enc = gpt2_tokenizer()

    class Tokenizer:
        eos_token_id = EOT

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [enc.encode_ordinary(t) for t in texts]}

    load_tokens = load_example("finetune_hf_checkpoint").load_tokens
    ids = TokenStream(shards["val"]).read(0, TokenStream(shards["val"]).n_tokens)
    assert list(load_tokens(shards["val"], 10**9, Tokenizer(), GPT2_VOCAB)) == ids.tolist()
