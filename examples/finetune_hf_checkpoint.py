"""Fine-tune a pretrained causal LM from a local checkpoint with a mitigation (offline, nothing is downloaded).

    python examples/finetune_hf_checkpoint.py --checkpoint /models/gpt2 --output_dir out/gpt2-mu \\
        --mitigation mu-centering --untie_embeddings --max_steps 500 --learning_rate 3e-5

Every TrainingArguments flag works (HfArgumentParser), plus StableTrainingArguments' --mitigation,
--mitigation_gamma, --orthograd_skip and --allow_tied_embeddings. The text is the embedded corpus
(`python data/prepare_embedded.py`, or --train/--val for other llm.c-format GPT-2 shards): if the
checkpoint directory holds a tokenizer, the documents are decoded and re-tokenised with it; a
checkpoint without one must use GPT-2's vocabulary. Prints the validation loss before and after,
and saves the fine-tuned model to --output_dir.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser  # noqa: E402

from nanoGPT.data import EOT, DataError, TokenStream, gpt2_tokenizer  # noqa: E402
from nanoGPT.hf import (MitigationNotApplicable, StableTrainer, StableTrainingArguments, TokenBlocks,  # noqa: E402
                        embeddings_tied, untie_output_embeddings)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class FinetuneArguments:
    checkpoint: str = field(metadata={"help": "local directory of a Hugging Face causal-LM checkpoint"})
    train: str = field(default=str(ROOT / "data/embedded/embedded_train_*.bin"), metadata={"help": "GPT-2 token shards"})
    val: str = field(default=str(ROOT / "data/embedded/embedded_val_*.bin"))
    seq_len: int = 256
    max_train_tokens: int = 1 << 20
    val_tokens: int = 1 << 15
    untie_embeddings: bool = field(default=False, metadata={
        "help": "give a tied LM head its own copy first, so that mu-loss / mu-centering leave the input embeddings alone"})


def load_tokens(pattern: str, max_tokens: int, tokenizer, vocab_size: int) -> np.ndarray | list[int]:
    """The first max_tokens GPT-2 tokens of the shards, re-tokenised document by document with the
    checkpoint's tokenizer where it has one (each document after its EOS, as FineWeb after EOT)."""
    stream = TokenStream(pattern, None if tokenizer else vocab_size)
    ids = stream.read(0, min(stream.n_tokens, max_tokens))
    if tokenizer is None:
        return ids
    gpt2 = gpt2_tokenizer()
    docs = [gpt2.decode(d[d != EOT].tolist()) for d in np.split(ids, np.flatnonzero(ids == EOT))]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    encoded = tokenizer([d for d in docs if d], add_special_tokens=False)["input_ids"]
    return [t for doc in encoded for t in eos + doc]


def main(argv: list[str] | None = None) -> int:
    ft, args = HfArgumentParser((FinetuneArguments, StableTrainingArguments)).parse_args_into_dataclasses(argv)
    path = Path(ft.checkpoint)
    if not path.is_dir():
        raise SystemExit(f"error: --checkpoint {path} is not a directory (a local checkpoint is needed; nothing is downloaded)")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    has_tokenizer = any((path / f).exists() for f in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if has_tokenizer else None
    if ft.untie_embeddings and embeddings_tied(model):
        untie_output_embeddings(model)

    vocab = model.get_input_embeddings().num_embeddings
    try:
        train = TokenBlocks(load_tokens(ft.train, ft.max_train_tokens, tokenizer, vocab), ft.seq_len)
        val = TokenBlocks(load_tokens(ft.val, ft.val_tokens, tokenizer, vocab), ft.seq_len)
        trainer = StableTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                processing_class=tokenizer)
    except (DataError, MitigationNotApplicable) as e:
        raise SystemExit(f"error: {e}") from None

    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.save_model()
    print(f"{path.name} with {trainer.mitigation.name}: eval loss {before:.4f} -> {after:.4f} "
          f"after {trainer.state.global_step} steps; saved to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
