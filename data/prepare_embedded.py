"""Build the "embedded" default corpus: English prose every Python installation ships.

Documents are the pydoc topics (the language reference, one per topic) and the longer
docstrings of the pure-Python standard library. No download is needed, and the same Python
gives byte-identical shards, so a fresh machine can train and evaluate at once. Writes
<out>/embedded_val_000000.bin and <out>/embedded_train_000001.bin (FineWeb's naming); val
holds --val-fraction of the tokens but at least 100k (the corpus is only ~0.5M tokens).

    python data/prepare_embedded.py [--out data/embedded] [--val-fraction 0.05] [--force]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import math
import os
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    import nanoGPT.data  # noqa: F401
except ImportError:
    # Run as a script from a checkout that was not pip-installed: sys.path[0] is data/, so
    # the package next to it is only found through the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoGPT.data import EOT, DataError, load_shard, tokenize_documents, write_shard

MIN_DOCSTRING_CHARS = 200
MIN_VAL_TOKENS = 100_000
SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
SHARDS = {"val": "embedded_val_000000.bin", "train": "embedded_train_000001.bin"}


def stdlib_docstrings() -> list[str]:
    """Module, class and function docstrings of the stdlib's .py files, in sorted-path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        files += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames if f.endswith(".py")]
    docs = []
    for rel in sorted(files):
        try:
            with warnings.catch_warnings():  # old modules' invalid escapes warn at parse time
                warnings.simplefilter("ignore")
                tree = ast.parse((root / rel).read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in definitions(tree):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                docs.append(doc)
    return docs


def definitions(node: ast.AST) -> Iterator[ast.AST]:
    """The module, class and function nodes in a tree.

    Walks statements only: definitions never sit inside expressions, and skipping those
    makes this several times faster than ast.walk.
    """
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            yield from definitions(child)


def gather_documents() -> list[str]:
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)] + stdlib_docstrings()
    return list(dict.fromkeys(docs))  # drop exact duplicates, keep first-seen order


def split_tokens(docs: list[str], val_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(val, train, number of val documents): whole documents in sha1-of-text order.

    Hash order shuffles the documents deterministically (the sequential loader would otherwise
    see all language-reference topics first); val takes the first documents in that order
    until it holds val_fraction of the tokens, and at least MIN_VAL_TOKENS.
    """
    docs = sorted(docs, key=lambda d: hashlib.sha1(d.encode()).digest())
    tokens = tokenize_documents(docs)
    starts = np.flatnonzero(tokens == EOT)  # encode_ordinary never emits EOT: one per document
    need = max(math.ceil(val_fraction * len(tokens)), MIN_VAL_TOKENS)
    n_val = int(np.searchsorted(starts, need))
    if n_val == len(docs):
        raise SystemExit(f"error: the corpus holds only {len(tokens)} tokens, too few for a val "
                         f"split of {need} tokens plus a train split")
    return tokens[:starts[n_val]], tokens[starts[n_val]:], n_val


def shards_valid(out: Path) -> bool:
    try:
        for name in SHARDS.values():
            load_shard(out / name)
    except DataError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "embedded")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--force", action="store_true", help="rebuild even if valid shards exist")
    args = ap.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        ap.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not args.force and shards_valid(args.out):
        print(f"embedded corpus already present and valid in {args.out} (use --force to rebuild)")
        return 0

    t0 = time.perf_counter()
    docs = gather_documents()
    val, train, n_val = split_tokens(docs, args.val_fraction)
    write_shard(args.out / SHARDS["val"], val)
    write_shard(args.out / SHARDS["train"], train)
    print(f"embedded corpus: {len(docs)} documents -> val {n_val} docs {len(val):,} tokens, "
          f"train {len(docs) - n_val} docs {len(train):,} tokens in {args.out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
