"""Shared fixtures: a small real-text corpus in shards, and tiny run configs over it."""
from __future__ import annotations

import os
from pathlib import Path

# The suite runs on the CPU. The loss head's Triton kernel (tests/test_triton_head.py) then runs
# in Triton's interpreter, which has to be on before anything imports triton (torch's inductor
# does, in the compile tests): triton.language's own helpers are decorated when it is imported.
os.environ["TRITON_INTERPRET"] = "1"

import pydoc_data.topics
import pytest
import tomli_w

from nanoGPT.config import config_from_dict
from nanoGPT.data import tokenize_documents, write_shard


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, str]:
    """Train/val shards of Python's own reference prose (ships with Python, no download)."""
    root = tmp_path_factory.mktemp("shards")
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    write_shard(root / "t_val_000000.bin", tokenize_documents(topics[:10]))
    write_shard(root / "t_train_000001.bin", tokenize_documents(topics[10:]))
    return {"train": str(root / "t_train_*.bin"), "val": str(root / "t_val_*.bin")}


def _tiny_sections(out_dir: Path, shards: dict[str, str]) -> dict:
    return {
        "out_dir": str(out_dir),
        "model": {"scale": "tiny"},
        "batch": {"batch_size": 4, "seq_len": 32},
        "schedule": {"max_steps": 12, "warmup_steps": 2, "min_lr": 1e-5},
        "optim": {"lr": 1e-2},
        "data": {"train": shards["train"], "val": shards["val"], "val_tokens": 512, "val_batch_size": 4},
        "log": {"log_interval": 1, "checkpoint_interval": 4},
        "system": {"device": "cpu"},
    }


def _merge(data: dict, sections: dict) -> dict:
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def tiny_run(out_dir: Path, shards: dict[str, str], **sections) -> "RunConfig":
    """A run config of the tiny scale that trains in well under a second per step on a CPU."""
    return config_from_dict(_merge(_tiny_sections(out_dir, shards), sections))


GAMMAS = {"z-loss": [1e-4], "mu-loss": [1e-1]}


def tiny_grid(path: Path, name: str, shards: dict[str, str], methods: list[str], learning_rates: list[float],
              **sections) -> Path:
    """A grid file of tiny_run's runs (sections override tiny_run's), written to path for the stages."""
    base = _merge(_tiny_sections(path.parent / "out", shards), sections)
    grid = {"name": name, "scales": [base.pop("model")["scale"]], "methods": methods,
            "learning_rates": learning_rates, "out_dir": base.pop("out_dir")}
    base["optim"].pop("lr")  # the grid's learning_rates set it
    gamma = {m: GAMMAS[m] for m in methods if m in GAMMAS}
    path.write_text(tomli_w.dumps({"grid": grid, "gamma": gamma, "base": base}))
    return path
