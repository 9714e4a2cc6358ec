"""Download the published GPT-2-tokenized FineWeb shards (the modded-nanogpt speedrun's).

    python data/download_fineweb.py --train-shards 132 --out data/fineweb100B

Fetches fineweb_val_000000.bin and fineweb_train_000001.bin ... from the hub dataset
kjj0/fineweb100B-gpt2 (100M tokens, ~200 MB each) with huggingface_hub. A published run
reads 100k steps x 64 x 2048 = 13.1B tokens, i.e. 132 train shards (26.6 GB with val);
--tokens computes the count for another budget. Restarting the same command fetches only
what is missing: a file already present counts only once its header checks out (magic,
version, token count matching the file size), and a partial download resumes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

try:
    import nanoGPT.data  # noqa: F401
except ImportError:  # run from a checkout that was not pip-installed (sys.path[0] is data/)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanoGPT.config import DataSection
from nanoGPT.data import DataError, read_header

REPO = "kjj0/fineweb100B-gpt2"
SHARD_TOKENS = 100_000_000
PUBLISHED_TOKENS = 100_000 * 64 * 2048
# The default target is where the default run config reads its shards (data.train).
DEFAULT_OUT = Path(DataSection().train).parent


def shard_names(train_shards: int) -> list[str]:
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def shards_for(tokens: int) -> int:
    """Train shards holding `tokens` training tokens plus the one extra target token."""
    return math.ceil((tokens + 1) / SHARD_TOKENS)


def check(path: Path) -> str | None:
    """None if the shard's header is valid, else what is wrong."""
    try:
        read_header(path)
    except DataError as e:
        return str(e)
    return None


def hub_download(repo_id: str, filename: str, local_dir: Path, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                           local_dir=local_dir, revision=revision)


def download_shards(out: Path, names: Sequence[str], repo: str = REPO, revision: str | None = None,
                    workers: int = 4, download: Callable[..., str] = hub_download) -> list[str]:
    """Fetch the named shards that `out` lacks; return the names fetched.

    Raises DataError listing every shard that failed (the others are kept: rerun to resume).
    """
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in names:
        path = out / name
        if path.exists():
            problem = check(path)
            if problem is None:
                continue
            # A cached copy of a remote file: deleting it loses nothing that the download won't restore.
            print(f"warning: {problem}; downloading it again", file=sys.stderr)
            path.unlink()
        missing.append(name)
    print(f"{out}: {len(names) - len(missing)} of {len(names)} shards present, fetching {len(missing)}")

    def fetch(name: str) -> None:
        path = Path(download(repo, name, out, revision))
        problem = check(path)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise DataError(problem)

    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(fetch, name): name for name in missing}
        for future in as_completed(futures):
            name = futures[future]
            try:
                future.result()
                print(f"  {name} ok")
            except Exception as e:  # a network, hub or disk error for this file only
                failed[name] = f"{type(e).__name__}: {e}"
    if failed:
        lines = "\n".join(f"  {name}: {why}" for name, why in sorted(failed.items()))
        raise DataError(f"{len(failed)} of {len(missing)} downloads failed (the other shards are kept; "
                        f"rerun the same command to fetch the rest):\n{lines}")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default: {DEFAULT_OUT})")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--train-shards", type=int, help=f"number of train shards (default: {shards_for(PUBLISHED_TOKENS)}, "
                                                       "what one published run reads)")
    size.add_argument("--tokens", type=float, help="enough train shards for this many training tokens")
    ap.add_argument("--repo", default=REPO, help="hub dataset holding the shards")
    ap.add_argument("--revision", help="hub revision (branch, tag or commit) to pin")
    ap.add_argument("--workers", type=int, default=4, help="parallel downloads")
    args = ap.parse_args(argv)
    train_shards = args.train_shards or shards_for(int(args.tokens or PUBLISHED_TOKENS))
    if train_shards < 1:
        ap.error(f"--train-shards must be >= 1, got {train_shards}")
    try:
        download_shards(args.out, shard_names(train_shards), args.repo, args.revision, args.workers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished shards in {args.out} are kept and partial downloads resume; "
              "rerun the same command", file=sys.stderr)
        os._exit(130)  # without waiting for the download threads to finish their files
    print(f"{args.out}: all {train_shards + 1} shards present and valid "
          f"({train_shards * SHARD_TOKENS / 1e9:.1f}B train tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
