"""Tokenize text into llm.c shards: raw FineWeb streamed from the hub, or local files.

    python data/tokenize_corpus.py --fineweb sample-10BT --out data/fineweb_sample10BT
    python data/tokenize_corpus.py --files my_corpus/ extra/*.jsonl --out data/my_corpus

Documents are FineWeb's `text` column (or, locally: a whole .txt file, the "text" field of
each .jsonl line, a .parquet file's "text" column; a folder means every such file in it).
Each is GPT-2-tokenized in a worker process with <|endoftext|> before it, and the tokens are
written in input order: <prefix>_val_000000.bin holds the first --val-tokens, then
<prefix>_train_000001.bin, ... hold --shard-tokens each (the published FineWeb layout).
The same input gives byte-identical shards whatever the number of workers.

An interrupted run resumes: after each shard, <out>/<prefix>.progress.json records the
document and token where the next shard starts, and rerunning the same command starts there.
Shards are written under a temporary name and renamed, so a kill never leaves half a shard.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    import nanoGPT.data  # noqa: F401
except ImportError:  # run from a checkout that was not pip-installed (sys.path[0] is data/)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoGPT.checkpoint import read_json, write_json
from nanoGPT.data import GPT2_VOCAB, DataError, encode_documents, write_shard

FINEWEB = "HuggingFaceFW/fineweb"
SUFFIXES = (".txt", ".jsonl", ".parquet")
BATCH_CHARS = 1 << 20  # ~1 MB of text per worker task: long enough to amortise the pickling


# ----------------------------------------------------------------------------- sources
def local_files(paths: Sequence[str]) -> list[Path]:
    """The files that paths, folders (searched recursively) and globs name, in a fixed order."""
    files: list[Path] = []
    for p in paths:
        matches = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else [p]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise DataError(f"{p}: no such file or folder")
        for m in map(Path, matches):
            if m.is_dir():
                files += sorted(f for f in m.rglob("*") if f.suffix in SUFFIXES and f.is_file())
            elif m.suffix in SUFFIXES:
                files.append(m)
            else:
                raise DataError(f"{m}: unsupported file type '{m.suffix}'; expected one of {', '.join(SUFFIXES)}")
    if not files:
        raise DataError(f"{' '.join(paths)}: no {'/'.join(SUFFIXES)} files found")
    return files


def read_documents(path: Path) -> Iterator[str]:
    """The documents of one local file; a malformed file is named with what is wrong."""
    if path.suffix == ".txt":
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_text(path, lineno, line)
    else:
        yield from _parquet_texts(path)


def _jsonl_text(path: Path, lineno: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f'{path}:{lineno}: expected an object with a string "text" field')
    return record["text"]


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise DataError(f"{path}: no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise DataError(f"{path}: a 'text' value is {text!r}, not a string")
            yield text


def fineweb_documents(config: str, split: str = "train", dataset: str = FINEWEB) -> Iterator[str]:
    """FineWeb's documents streamed from the hub with `datasets` (nothing stored but shards)."""
    from datasets import load_dataset

    for row in load_dataset(dataset, name=config, split=split, streaming=True):
        yield row["text"]


def describe_local(files: Sequence[Path]) -> dict:
    """What a resume must find unchanged: the files, their sizes and modification times."""
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


# ----------------------------------------------------------------------------- tokenizing
def batched(documents: Iterable[str], max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_in_order(batches: Iterable[list[str]], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """encode_documents over the batches, in worker processes, results in input order.

    At most 2 tasks per worker are in flight, so a 10B-token stream is never read ahead into
    memory (Pool.imap's feeder would read the whole input).
    """
    if workers <= 1:
        yield from map(encode_documents, batches)
        return
    # forkserver: workers start from a clean process that imported only nanoGPT.data, not a
    # fork of this one (whose threads, e.g. tqdm's monitor, a fork could catch mid-lock).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["nanoGPT.data"])
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(encode_documents, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


# ----------------------------------------------------------------------------- writing
class ShardWriter:
    """Cuts a token stream into shards, tracking where each shard starts in the documents."""

    def __init__(self, out: Path, prefix: str, val_tokens: int, shard_tokens: int, progress: dict):
        self.out, self.prefix = out, prefix
        self.val_tokens, self.shard_tokens = val_tokens, shard_tokens
        self.progress = progress
        self.buffer = np.empty(self.capacity, dtype=np.uint16)
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.val_tokens if not self.progress["shards"] else self.shard_tokens

    def shard_path(self, index: int) -> Path:
        split = "val" if index == 0 else "train"
        return self.out / f"{self.prefix}_{split}_{index:06d}.bin"

    def add(self, tokens: np.ndarray, lengths: np.ndarray, first_doc: int, skip: int = 0) -> int:
        """Append the documents first_doc, first_doc+1, ... (dropping `skip` leading tokens).

        Returns the number of tokens taken (all of them)."""
        ends = np.cumsum(lengths) - skip
        tokens = tokens[skip:]
        pos = 0
        while pos < len(tokens):
            take = min(self.capacity - self.filled, len(tokens) - pos)
            self.buffer[self.filled:self.filled + take] = tokens[pos:pos + take]
            self.filled += take
            pos += take
            if self.filled == self.capacity:
                doc = int(np.searchsorted(ends, pos, side="right"))
                start = int(ends[doc - 1]) if doc else -skip
                self._flush(next_doc=first_doc + doc, next_offset=pos - start)
        return len(tokens)

    def finish(self) -> None:
        # Marked complete in the same write as the last shard: a kill between two writes
        # could otherwise leave a record whose next document is "none" but is not complete.
        self.progress["complete"] = True
        if self.filled:
            self._flush(next_doc=None, next_offset=0)
        else:
            self._save_progress()

    def _flush(self, next_doc: int | None, next_offset: int) -> None:
        path = self.shard_path(len(self.progress["shards"]))
        write_shard(path, self.buffer[:self.filled], GPT2_VOCAB)
        self.progress["shards"].append(path.name)
        self.progress["tokens"] += self.filled
        self.progress["next_doc"], self.progress["next_offset"] = next_doc, next_offset
        self._save_progress()
        self.filled = 0
        self.buffer = np.empty(self.capacity, dtype=np.uint16)

    def _save_progress(self) -> None:
        write_json(progress_path(self.out, self.prefix), self.progress)


def progress_path(out: Path, prefix: str) -> Path:
    return out / f"{prefix}.progress.json"


def load_progress(out: Path, prefix: str, job: dict) -> dict:
    """The progress of an earlier run of the same job, or a fresh one; refuses a different job."""
    path = progress_path(out, prefix)
    if path.exists():
        try:
            progress = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{path}: corrupt progress file; delete {out} or choose another --out") from None
        if progress.get("job") != job:
            raise DataError(f"{out}: holds '{prefix}' shards of a different source or settings (see {path}); "
                            "rerun with the original arguments, or choose another --out")
        return progress
    existing = sorted(out.glob(f"{prefix}_*.bin")) if out.is_dir() else []
    if existing:
        raise DataError(f"{out}: already holds {existing[0].name} (and {len(existing) - 1} more) but no "
                        f"{path.name}; refusing to overwrite them: choose another --out or --prefix")
    return {"job": job, "shards": [], "tokens": 0, "next_doc": 0, "next_offset": 0, "complete": False}


def tokenize_to_shards(documents: Iterable[str], out: Path, job: dict, prefix: str = "corpus",
                       shard_tokens: int = 100_000_000, val_tokens: int | None = None,
                       max_tokens: int | None = None, workers: int = 1, show_progress: bool = True,
                       batch_chars: int = BATCH_CHARS) -> dict:
    """Tokenize the documents into shards under `out`; resume where an earlier run of the same
    job stopped. `job` describes the source (it, and the settings, must match to resume).

    Returns the progress record: shard names, total tokens, whether complete."""
    val_tokens = val_tokens or shard_tokens
    job = {**job, "tokenizer": "gpt2", "shard_tokens": shard_tokens, "val_tokens": val_tokens,
           "max_tokens": max_tokens}
    progress = load_progress(out, prefix, job)
    if progress["complete"]:
        return progress
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, prefix, val_tokens, shard_tokens, progress)
    first_doc, skip = progress["next_doc"], progress["next_offset"]
    remaining = None if max_tokens is None else max_tokens - progress["tokens"]
    docs = itertools.islice(documents, first_doc, None)
    with tqdm(total=max_tokens, initial=progress["tokens"], unit="tok", unit_scale=True,
              desc=f"tokenizing into {out}", disable=not show_progress) as bar:
        for tokens, lengths in encode_in_order(batched(docs, batch_chars), workers):
            if remaining is not None and len(tokens) - skip >= remaining:
                writer.add(tokens[:skip + remaining], lengths, first_doc, skip)
                bar.update(remaining)
                break
            taken = writer.add(tokens, lengths, first_doc, skip)
            bar.update(taken)
            if remaining is not None:
                remaining -= taken
            first_doc, skip = first_doc + len(lengths), 0
    writer.finish()
    return progress


# ----------------------------------------------------------------------------- command line
def count(text: str) -> int:
    """A token count such as 100000000, 1e8 or 100_000_000."""
    value = float(text.replace("_", ""))
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--fineweb", metavar="CONFIG", help="stream HuggingFaceFW/fineweb's CONFIG, e.g. sample-10BT")
    src.add_argument("--files", nargs="+", metavar="PATH", help=".txt/.jsonl/.parquet files, folders or globs")
    ap.add_argument("--out", type=Path, required=True, help="folder for the shards")
    ap.add_argument("--prefix", help="shard name prefix (default: fineweb, or corpus for --files)")
    ap.add_argument("--dataset", default=FINEWEB, help="hub dataset for --fineweb")
    ap.add_argument("--split", default="train")
    ap.add_argument("--shard-tokens", type=count, default=100_000_000, help="tokens per train shard")
    ap.add_argument("--val-tokens", type=count, help="tokens in the val shard (default: --shard-tokens)")
    ap.add_argument("--max-tokens", type=count, help="stop after this many tokens in all")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer processes")
    args = ap.parse_args(argv)
    try:
        if args.fineweb:
            job = {"dataset": args.dataset, "config": args.fineweb, "split": args.split}
            documents = fineweb_documents(args.fineweb, args.split, args.dataset)
        else:
            files = local_files(args.files)
            job = describe_local(files)
            documents = (doc for f in files for doc in read_documents(f))
        prefix = args.prefix or ("fineweb" if args.fineweb else "corpus")
        progress = tokenize_to_shards(documents, args.out, job, prefix, args.shard_tokens, args.val_tokens,
                                      args.max_tokens, args.workers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e} while writing {e.filename or args.out}; finished shards are kept, "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished shards in {args.out} are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    shards = progress["shards"]
    print(f"{args.out}: {len(shards)} shards, {progress['tokens']:,} tokens "
          f"(val: {shards[0]}{', train: ' + shards[1] + ' ...' if len(shards) > 1 else ''})")
    if len(shards) < 2:
        print("warning: the corpus filled only the val shard; lower --val-tokens to get train shards",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
