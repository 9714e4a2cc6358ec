"""Tests for data/tokenize_corpus.py and data/download_fineweb.py: no network, the hub faked."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoGPT.data import EOT, DataError, TokenStream, gpt2_tokenizer, read_header, shard_vocab_size, write_shard

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tc = load_script("tokenize_corpus")
dl = load_script("download_fineweb")


def corpus_texts(n: int = 120) -> list[str]:
    """Documents of varied length (a few thousand tokens in all), some with non-ASCII text."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return [f"Doc {i} — {topics[keys[i % len(keys)]][: 200 + 37 * (i % 13)]} é漢字" for i in range(n)]


def expected_tokens(texts: list[str]) -> list[int]:
    """The reference stream, tokenized one document at a time straight from tiktoken."""
    enc = gpt2_tokenizer()
    return [t for text in texts for t in [EOT, *enc.encode_ordinary(text)]]


def write_fineweb_parquet(path: Path, texts: list[str]) -> Path:
    """A parquet file in FineWeb's schema (its columns, with `text` among them)."""
    n = len(texts)
    table = pa.table({
        "text": texts, "id": [f"<urn:uuid:{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)], "date": ["2024-02-21T00:00:00Z"] * n,
        "file_path": ["s3://commoncrawl/x.warc.gz"] * n, "language": ["en"] * n,
        "language_score": [0.9] * n, "token_count": [len(t) // 4 for t in texts],
    })
    pq.write_table(table, path, row_group_size=17)
    return path


def read_shards(out: Path, prefix: str = "corpus") -> tuple[list[Path], np.ndarray]:
    files = sorted(out.glob(f"{prefix}_*.bin"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return files, np.concatenate([TokenStream([f]).read(0, read_header(f)) for f in files])


def digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.bin"))}


# --- local corpora -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder holding parquet (FineWeb schema), jsonl and txt files, and their documents in read order."""
    root = tmp_path_factory.mktemp("corpus")
    texts = corpus_texts()
    write_fineweb_parquet(root / "a.parquet", texts[:50])
    (root / "b.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[50:100])))
    (root / "sub").mkdir()
    for i, t in enumerate(texts[100:]):
        (root / "sub" / f"c{i:02d}.txt").write_text(t, encoding="utf-8")
    (root / "notes.md").write_text("ignored: not a corpus file type")
    return root, texts


def test_local_corpus_reads_back_token_for_token(mixed_corpus, tmp_path):
    root, texts = mixed_corpus
    out = tmp_path / "out"
    assert tc.main(["--files", str(root), "--out", str(out), "--shard-tokens", "3000",
                    "--val-tokens", "1000", "--workers", "2"]) == 0
    files, tokens = read_shards(out)
    expected = expected_tokens(texts)
    assert tokens.tolist() == expected
    assert [f.name for f in files[:2]] == ["corpus_val_000000.bin", "corpus_train_000001.bin"]
    sizes = [read_header(f) for f in files]
    assert sizes[0] == 1000 and all(s == 3000 for s in sizes[1:-1]) and 0 < sizes[-1] <= 3000
    assert all(shard_vocab_size(f) == 50257 for f in files)
    progress = json.loads((out / "corpus.progress.json").read_text())
    assert progress["complete"] and progress["tokens"] == len(expected)


def test_same_input_gives_byte_identical_shards_for_any_worker_count(mixed_corpus, tmp_path):
    root, _ = mixed_corpus
    digests = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        assert tc.main(["--files", str(root), "--out", str(out), "--shard-tokens", "2000", "--workers", str(workers)]) == 0
        digests.append(digest(out))
    assert len(digests[0]) > 2 and digests[0] == digests[1]


def test_max_tokens_stops_exactly(mixed_corpus, tmp_path):
    root, texts = mixed_corpus
    out = tmp_path / "out"
    assert tc.main(["--files", str(root), "--out", str(out), "--shard-tokens", "2000",
                    "--val-tokens", "500", "--max-tokens", "4321", "--workers", "1"]) == 0
    _, tokens = read_shards(out)
    assert tokens.tolist() == expected_tokens(texts)[:4321]


class Interrupt(Exception):
    pass


def interrupted_after(texts: list[str], n: int):
    """The documents, as a stream that breaks (like a Ctrl-C or a lost connection) after n."""
    for i, t in enumerate(texts):
        if i == n:
            raise Interrupt
        yield t


def test_interrupted_tokenization_resumes_to_identical_shards(tmp_path, monkeypatch):
    texts = corpus_texts()
    job = {"source": "test"}
    kw = dict(prefix="corpus", shard_tokens=1500, val_tokens=700, show_progress=False, batch_chars=2000)
    tc.tokenize_to_shards(iter(texts), tmp_path / "whole", job, **kw)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        tc.tokenize_to_shards(interrupted_after(texts, 80), out, job, **kw)
    progress = json.loads((out / "corpus.progress.json").read_text())
    assert not progress["complete"] and len(progress["shards"]) >= 2
    assert progress["next_offset"] > 0  # the next shard starts inside a document: the hard case
    assert not list(out.glob(".*.tmp"))  # no half-written shard

    encoded, real_encode = [], tc.encode_documents

    def counting_encode(batch):
        encoded.extend(batch)
        return real_encode(batch)
    monkeypatch.setattr(tc, "encode_documents", counting_encode)
    tc.tokenize_to_shards(iter(texts), out, job, **kw)
    assert digest(out) == digest(tmp_path / "whole")
    # The finished shards' documents were skipped, not tokenized again.
    assert encoded == texts[progress["next_doc"]:]
    assert json.loads((out / "corpus.progress.json").read_text())["complete"]
    assert tc.tokenize_to_shards(iter(()), out, job, **kw)["complete"]  # a finished job is a no-op


def test_resume_refuses_a_different_job_and_never_overwrites(tmp_path):
    texts = corpus_texts(30)
    out = tmp_path / "out"
    tc.tokenize_to_shards(iter(texts), out, {"source": "a"}, shard_tokens=1000, show_progress=False)
    before = digest(out)
    with pytest.raises(DataError, match="different source or settings"):
        tc.tokenize_to_shards(iter(texts), out, {"source": "b"}, shard_tokens=1000, show_progress=False)
    with pytest.raises(DataError, match="different source or settings"):
        tc.tokenize_to_shards(iter(texts), out, {"source": "a"}, shard_tokens=999, show_progress=False)
    (out / "corpus.progress.json").unlink()
    with pytest.raises(DataError, match="refusing to overwrite"):
        tc.tokenize_to_shards(iter(texts), out, {"source": "a"}, shard_tokens=1000, show_progress=False)
    (out / "corpus.progress.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt progress file"):
        tc.tokenize_to_shards(iter(texts), out, {"source": "a"}, shard_tokens=1000, show_progress=False)
    assert digest(out) == before


def test_a_changed_local_file_is_not_resumed_over(mixed_corpus, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(mixed_corpus[0], root)
    out = tmp_path / "out"
    assert tc.main(["--files", str(root), "--out", str(out), "--shard-tokens", "5000", "--workers", "1"]) == 0
    with open(root / "b.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    assert tc.main(["--files", str(root), "--out", str(out), "--shard-tokens", "5000", "--workers", "1"]) == 2


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.jsonl", "no such file or folder"),
    "suffix": (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "unsupported file type '.csv'"),
    "json": (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{oops\n') and d / "x.jsonl", "x.jsonl:2: not valid JSON"),
    "no_text": (lambda d: (d / "x.jsonl").write_text('{"body": "hi"}\n') and d / "x.jsonl",
                'x.jsonl:1: expected an object with a string "text" field'),
    "utf8": (lambda d: (d / "x.txt").write_bytes(b"caf\xe9") and d / "x.txt", "x.txt: not UTF-8 text"),
    "parquet_column": (lambda d: pq.write_table(pa.table({"body": ["x"]}), d / "x.parquet") or d / "x.parquet",
                       "x.parquet: no 'text' column (columns: body)"),
    "not_parquet": (lambda d: (d / "x.parquet").write_text("plain text") and d / "x.parquet",
                    "x.parquet: not a readable parquet file"),
    "empty_folder": (lambda d: (d / "empty").mkdir() or d / "empty", "no .txt/.jsonl/.parquet files found"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_local_input_gets_one_clear_error(tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    out = tmp_path / "out"
    assert tc.main(["--files", str(path), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not list(out.glob("*.bin")) and not list(out.glob("*.json"))


# --- raw FineWeb from the hub (datasets replaced by a local parquet stream) ----------------------

def test_raw_fineweb_streams_through_datasets(tmp_path, monkeypatch):
    import datasets

    texts = corpus_texts(60)
    local = write_fineweb_parquet(tmp_path / "fineweb.parquet", texts)
    real_load_dataset = datasets.load_dataset
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return real_load_dataset("parquet", data_files=str(local), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "out"
    assert tc.main(["--fineweb", "sample-10BT", "--out", str(out), "--shard-tokens", "4000",
                    "--val-tokens", "1000", "--workers", "1"]) == 0
    assert calls == [("HuggingFaceFW/fineweb", "sample-10BT", "train", True)]
    files, tokens = read_shards(out, "fineweb")
    assert files[0].name == "fineweb_val_000000.bin" and files[1].name == "fineweb_train_000001.bin"
    assert tokens.tolist() == expected_tokens(texts)


# --- cached GPT-2 shards from the hub (huggingface_hub replaced by a local folder) ----------------

@pytest.fixture
def fake_hub(tmp_path):
    """A folder serving the shards the hub would, and a stand-in for hf_hub_download."""
    served = tmp_path / "hub"
    rng = np.random.default_rng(0)
    for name in dl.shard_names(4):
        write_shard(served / name, rng.integers(0, 50257, size=500))

    class Hub:
        calls: list[str] = []
        fail: set[str] = set()

        def download(self, repo_id, filename, local_dir, revision):
            assert repo_id == dl.REPO
            self.calls.append(filename)
            if filename in self.fail:
                raise ConnectionError("connection reset by peer")
            target = Path(local_dir) / filename
            shutil.copyfile(served / filename, target)
            return str(target)

    hub = Hub()
    hub.served = served
    return hub


def test_download_fetches_and_verifies_every_shard(fake_hub, tmp_path):
    out = tmp_path / "fineweb"
    fetched = dl.download_shards(out, dl.shard_names(4), download=fake_hub.download, workers=2)
    assert sorted(fetched) == sorted(dl.shard_names(4)) == sorted(p.name for p in out.glob("*.bin"))
    assert digest(out) == digest(fake_hub.served)


def test_interrupted_download_resumes_with_only_the_missing_shards(fake_hub, tmp_path):
    out = tmp_path / "fineweb"
    names = dl.shard_names(4)
    fake_hub.fail = {names[2], names[4]}
    with pytest.raises(DataError) as err:
        dl.download_shards(out, names, download=fake_hub.download, workers=2)
    assert "2 of 5 downloads failed" in str(err.value) and names[2] in str(err.value)
    assert "rerun the same command" in str(err.value)
    kept = digest(out)
    assert sorted(kept) == sorted(set(names) - fake_hub.fail)

    # A shard cut short on disk (a copy interrupted outside the hub client) is caught by its header.
    with open(out / names[1], "r+b") as f:
        f.truncate(1024 + 100)
    fake_hub.fail, fake_hub.calls[:] = set(), []
    dl.download_shards(out, names, download=fake_hub.download, workers=2)
    assert sorted(fake_hub.calls) == sorted([names[1], names[2], names[4]])
    assert digest(out) == digest(fake_hub.served)
    fake_hub.calls[:] = []
    dl.download_shards(out, names, download=fake_hub.download)
    assert fake_hub.calls == []  # complete: nothing fetched


def test_a_corrupt_shard_from_the_hub_is_named_and_not_kept(fake_hub, tmp_path):
    bad = dl.shard_names(4)[3]
    with open(fake_hub.served / bad, "r+b") as f:
        f.write(b"\x00\x00\x00\x00")  # wrong magic
    out = tmp_path / "fineweb"
    with pytest.raises(DataError, match=f"{bad}: wrong magic number 0"):
        dl.download_shards(out, dl.shard_names(4), download=fake_hub.download)
    assert not (out / bad).exists() and len(list(out.glob("*.bin"))) == 4


def test_cli_calls_the_hub_client_for_the_dataset(fake_hub, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    seen = []

    def fake_hf_hub_download(repo_id, filename, *, repo_type=None, local_dir=None, revision=None, **kw):
        seen.append((repo_id, repo_type, revision))
        return fake_hub.download(repo_id, filename, local_dir, revision)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    out = tmp_path / "fineweb"
    assert dl.main(["--out", str(out), "--train-shards", "2", "--revision", "abc123"]) == 0
    assert seen == [(dl.REPO, "dataset", "abc123")] * 3
    assert "all 3 shards present and valid" in capsys.readouterr().out
    fake_hub.fail = {"fineweb_train_000003.bin"}
    assert dl.main(["--out", str(out), "--train-shards", "3"]) == 1
    assert "fineweb_train_000003.bin: ConnectionError" in capsys.readouterr().err


def test_shard_count_for_the_published_budget():
    # 100k steps x 64 x 2048 = 13,107,200,000 tokens (+1 target) -> 132 shards of 100M.
    assert dl.shards_for(dl.PUBLISHED_TOKENS) == 132
    assert dl.shards_for(100_000_000 - 1) == 1 and dl.shards_for(100_000_000) == 2
    assert dl.DEFAULT_OUT == Path("data/fineweb100B")


def test_scripts_run_as_plain_commands(tmp_path):
    """The README's commands: each script runs from the repository root as `python data/X.py`."""
    import subprocess

    (tmp_path / "doc.txt").write_text("Hello world")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "data/tokenize_corpus.py", "--files", str(tmp_path / "doc.txt"),
                           "--out", str(out), "--workers", "1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_shards(out)[1].tolist() == [EOT, 15496, 995]
    assert "lower --val-tokens" in proc.stderr  # one tiny document fills only the val shard
    proc = subprocess.run([sys.executable, "data/download_fineweb.py", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "132 train shards" in proc.stdout
