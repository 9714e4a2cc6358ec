"""Tokenization throughput of data/tokenize_corpus.py (tokens/s) against the number of workers.

    python scripts/benchmark_tokenize.py --workers 1 2 --mb 64 --label cpu2

Builds a JSONL corpus of English prose (the pydoc topics, repeated to --mb megabytes of text),
then times the whole local path (read JSONL, tokenize in worker processes, write shards) once
per worker count, and checks that every worker count wrote byte-identical shards. Appends
rows to results/benchmarks/tokenize_<label>.csv.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
spec = importlib.util.spec_from_file_location("tokenize_corpus", REPO / "data" / "tokenize_corpus.py")
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)


def build_corpus(path: Path, megabytes: int) -> int:
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    written, i = 0, 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            text = f"Copy {i // len(docs)}. " + docs[i % len(docs)]
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text.encode())
            i += 1
    return i


def run(corpus: Path, out: Path, workers: int) -> tuple[float, int, str]:
    files = tc.local_files([str(corpus)])
    documents = (doc for f in files for doc in tc.read_documents(f))
    t0 = time.perf_counter()
    progress = tc.tokenize_to_shards(documents, out, tc.describe_local(files), workers=workers,
                                     shard_tokens=10_000_000, show_progress=False)
    seconds = time.perf_counter() - t0
    h = hashlib.sha256()
    for name in progress["shards"]:
        h.update((out / name).read_bytes())
    return seconds, progress["tokens"], h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mb", type=int, default=64, help="megabytes of text to tokenize")
    ap.add_argument("--label", default=platform.node() or "host")
    args = ap.parse_args()
    out_csv = REPO / "results" / "benchmarks" / f"tokenize_{args.label}.csv"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        n_docs = build_corpus(corpus, args.mb)
        rows, digests = [], set()
        for w in args.workers:
            seconds, tokens, digest = run(corpus, Path(tmp) / f"out{w}", w)
            digests.add(digest)
            rows.append({"label": args.label, "cpus": os.cpu_count(), "workers": w, "mb_text": args.mb,
                         "documents": n_docs, "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_s": round(tokens / seconds), "shards_sha256": digest[:16]})
            print(f"workers {w:3d}: {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds / 1e6:.2f}M tokens/s",
                  flush=True)
    base = rows[0]["tokens_per_s"] / rows[0]["workers"]
    for r in rows:
        r["speedup_per_worker"] = round(r["tokens_per_s"] / base / r["workers"], 2)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out_csv}; identical shards for every worker count: {len(digests) == 1}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
