"""A run's files, written atomically: a crash or a full disk mid-write never leaves a
half-written file in place.

Everything a run writes that a later step reads (checkpoint, status, resolved config) goes
through ``atomic_write``: write a temporary file in the same directory, fsync, then rename
over the target, which POSIX makes atomic. A checkpoint also carries the sha256 of its
bytes in a sidecar, so a file damaged after the fact is detected when it is loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def atomic_write(path: str | Path, *chunks: bytes) -> None:
    """Write the chunks to ``path`` as one atomic replacement (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600); 0666 lets the umask decide, so a
    # team sharing a cluster folder can read each other's shards, checkpoints and logs.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run's status.json; a folder without one has not started training."""
    path = run_dir / "status.json"
    return read_json(path) if path.exists() else {"state": "not started"}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log up to the first line a kill cut short (all before it are whole)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` atomically, then its checksum (a checkpoint without a matching
    checksum is treated as damaged, so the order of the two renames is safe)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write(path, data)
    atomic_write(Path(str(path) + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    sidecar = Path(str(path) + ".sha256")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {sidecar.name}: it was not completely written")
    if hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        raise CheckpointError(f"checkpoint {path} is damaged: its sha256 does not match {sidecar.name}")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
