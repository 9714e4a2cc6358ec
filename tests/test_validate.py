"""Stage 2's numbers against an independent computation on the same tokens.

The reference reads the validation shard with numpy (the llm.c layout: a 256-int32 header,
then uint16 tokens), cuts it into rows of seq_len targets as the validation budget is
defined (the first val_tokens predicted tokens; a shorter last row), runs the checkpoint's
model in float64 and computes every number from its definition: softmax cross-entropy by
log_softmax, StableMax from s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0), the logit moments over
all logits, mean log²Z, and the embedding statistics from the weights.
"""
from __future__ import annotations

import glob
import math

import numpy as np
import pytest
import torch

from conftest import tiny_run
from formulas import stablemax_s_ref
from nanoGPT import validate
from nanoGPT.checkpoint import load_checkpoint
from nanoGPT.model import GPT
from nanoGPT.train import train


def reference(cfg, val_tokens: int) -> dict[str, float]:
    shard = sorted(glob.glob(cfg.data.val))[0]
    tokens = torch.from_numpy(np.fromfile(shard, dtype="<u2", offset=256 * 4)[:val_tokens + 1].astype(np.int64))
    model = GPT(cfg.gpt_config())
    model.load_state_dict(load_checkpoint(cfg.run_dir / "ckpt.pt")["model"])
    model = model.double().eval()
    L = cfg.batch.seq_len
    ce, sm, lse_sq, zs, zsq, n_logits = [], [], [], 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, val_tokens, L):
            n = min(L, val_tokens - start)
            x, y = tokens[start:start + n], tokens[start + 1:start + n + 1]
            z = model(x[None])[0]
            ce.append(-torch.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1))
            s = stablemax_s_ref(z)
            sm.append(-torch.log(s / s.sum(-1, keepdim=True)).gather(1, y[:, None]).squeeze(1))
            lse_sq.append(torch.logsumexp(z, -1).pow(2))
            zs, zsq, n_logits = zs + z.sum().item(), zsq + z.pow(2).sum().item(), n_logits + z.numel()
        E, W = model.lm_head.weight, model.wte.weight
        mean = zs / n_logits
        return {"test_loss_softmax": torch.cat(ce).mean().item(), "stablemax": torch.cat(sm).mean().item(),
                "lse_sq_mean": torch.cat(lse_sq).mean().item(), "logit_mean": mean,
                "logit_std": math.sqrt(zsq / n_logits - mean ** 2), "mu_out_norm": E.mean(0).norm().item(),
                "mu_in_norm": W.mean(0).norm().item(), "emb_out_norm": E.norm(dim=1).mean().item(),
                "emb_in_norm": W.norm(dim=1).mean().item()}


@pytest.mark.parametrize("method", ["baseline", "stablemax"])
def test_validation_numbers_match_an_independent_computation(tmp_path, shards, method):
    cfg = tiny_run(tmp_path, shards, method={"name": method}, schedule={"max_steps": 3, "warmup_steps": 1},
                   data={"val_tokens": 200, "val_batch_size": 3})  # 6 full rows of 32 and one of 8, in 3 batches
    assert train(cfg) == "finished"
    validate.prepare(cfg.run_dir)
    got = validate.evaluate(cfg.run_dir, "cpu")
    ref = reference(cfg, 200)
    assert got["val_tokens"] == 200
    assert got["test_loss_kind"] == ("stablemax" if method == "stablemax" else "softmax")
    assert got["test_loss"] == pytest.approx(ref["stablemax"] if method == "stablemax" else ref["test_loss_softmax"], rel=1e-5)
    assert got["test_perplexity"] == pytest.approx(math.exp(got["test_loss"]))
    for key in ("test_loss_softmax", "lse_sq_mean", "logit_std", "mu_out_norm", "mu_in_norm", "emb_out_norm", "emb_in_norm"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    assert got["logit_mean"] == pytest.approx(ref["logit_mean"], rel=1e-4, abs=1e-6)
