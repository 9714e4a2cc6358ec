"""Train small randomly initialised GPT-2- and Llama-style Hugging Face models with each mitigation.

No downloads: the models are built from configs, the tokens are the embedded corpus in GPT-2's
vocabulary (create it once with `python data/prepare_embedded.py`). Prints one row per run.

    python examples/train_hf_from_scratch.py                     # gpt2 and llama x all six methods
    python examples/train_hf_from_scratch.py --arch llama --mitigation mu-centering+orthograd z-loss --steps 300

The default run is a smoke test (a few steps, under a minute on 2 CPU cores), far too short for
the methods to differ; raise --steps and the model size to compare them. The embedded corpus is
Python documentation, not web text.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, set_seed  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from nanoGPT.data import EOT, GPT2_VOCAB  # noqa: E402
from nanoGPT.hf import StableTrainer, StableTrainingArguments, TokenBlocks, output_embedding  # noqa: E402
from nanoGPT.mitigations import METHODS, output_mean, parse_method  # noqa: E402

DEFAULT_GAMMA = {"z-loss": 1e-4, "mu-loss": 1e-1}  # METHODS.md's strengths; printed with every run


def model_config(arch: str, d_model: int, n_layer: int, n_head: int, seq_len: int) -> PretrainedConfig:
    """An untied config (as in the published grid, and required by mu-loss / mu-centering)."""
    common = dict(vocab_size=GPT2_VOCAB, bos_token_id=EOT, eos_token_id=EOT, tie_word_embeddings=False)
    if arch == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layer, n_head=n_head, n_positions=seq_len, **common)
    return LlamaConfig(hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layer,
                       num_attention_heads=n_head, max_position_embeddings=seq_len, **common)


def gamma_for(spec: str, gammas: dict[str, float]) -> float:
    return next((gammas[c] for c in parse_method(spec) if c in gammas), 0.0)


def train_one(arch: str, spec: str, a: argparse.Namespace, train: TokenBlocks, val: TokenBlocks, out: Path) -> dict:
    gamma = gamma_for(spec, {"z-loss": a.z_gamma, "mu-loss": a.mu_gamma})
    args = StableTrainingArguments(
        output_dir=str(out / f"{arch}-{spec}"), mitigation=spec, mitigation_gamma=gamma,
        max_steps=a.steps, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.batch_size,
        learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=max(1, a.steps // 10), optim=a.optim,
        adam_beta2=0.95, max_grad_norm=1.0, logging_steps=max(1, a.steps // 5), save_strategy="no",
        report_to="none", disable_tqdm=True, seed=a.seed, use_cpu=a.cpu)
    set_seed(a.seed)  # the same initial weights for every method
    model = AutoModelForCausalLM.from_config(model_config(arch, a.d_model, a.layers, a.heads, a.seq_len))
    trainer = StableTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    trainer.remove_callback(PrinterCallback)  # one table row per run instead of every log line
    trainer.train()
    metrics = trainer.evaluate()
    last = [h for h in trainer.state.log_history if "ce" in h][-1]
    return {"arch": arch, "mitigation": spec, "gamma": gamma, "train_ce": last["ce"], "aux": last["aux_loss"],
            "eval_loss": metrics["eval_loss"], "eval_softmax_ce": metrics.get("eval_softmax_ce", metrics["eval_loss"]),
            "mu_norm": output_mean(output_embedding(model)).norm().item()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    ap.add_argument("--mitigation", nargs="+", default=list(METHODS),
                    help="method specs as in nanoGPT configs, e.g. z-loss mu-centering+orthograd")
    ap.add_argument("--z-gamma", type=float, default=DEFAULT_GAMMA["z-loss"])
    ap.add_argument("--mu-gamma", type=float, default=DEFAULT_GAMMA["mu-loss"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--optim", default="adamw_torch", help="any Trainer optimizer name, e.g. sgd, adafactor")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-tokens", type=int, default=1024)
    ap.add_argument("--train", default=str(ROOT / "data/embedded/embedded_train_*.bin"))
    ap.add_argument("--val", default=str(ROOT / "data/embedded/embedded_val_*.bin"))
    ap.add_argument("--out", type=Path, help="Trainer output directories (default: a temporary one)")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    a = ap.parse_args(argv)
    for spec in a.mitigation:
        parse_method(spec)  # a typo fails before any training

    train = TokenBlocks.from_shards(a.train, a.seq_len, a.steps * a.batch_size * a.seq_len, GPT2_VOCAB)
    val = TokenBlocks.from_shards(a.val, a.seq_len, a.val_tokens, GPT2_VOCAB)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [train_one(arch, spec, a, train, val, a.out or Path(tmp)) for arch in a.arch for spec in a.mitigation]
    print(f"\n{a.steps} steps of {a.batch_size}x{a.seq_len} tokens, d_model {a.d_model}, {a.layers} layers, {a.optim}")
    print(f"{'arch':6} {'mitigation':24} {'gamma':>7} {'train CE':>9} {'aux':>9} {'eval CE':>8} {'softmax CE':>10} {'|mu|':>9}")
    for r in rows:
        print(f"{r['arch']:6} {r['mitigation']:24} {r['gamma']:7.0e} {r['train_ce']:9.4f} {r['aux']:9.2e} "
              f"{r['eval_loss']:8.4f} {r['eval_softmax_ce']:10.4f} {r['mu_norm']:9.2e}")
    print("train/eval CE: the cross-entropy the run optimises, without z-loss / mu-loss (StableMax's for "
          "stablemax runs); softmax CE: of the same logits; |mu|: norm of the mean output embedding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
