"""A run's files: written atomically, checked when read, and written by one process at a time.

Everything a run writes that a later step reads (checkpoint, status, resolved config) goes
through ``atomic_write``: write a temporary file in the same directory, fsync, then rename
over the target, which POSIX makes atomic. A checkpoint also carries the sha256 of its
bytes in a sidecar, so a file damaged after the fact is detected when it is loaded, and the
previous checkpoint is kept: a crash or a full disk at any point of writing a new one leaves
at least one intact. A training process holds ``train.lock`` in its run directory (an flock,
which the kernel releases when the process dies), so a second one cannot write there.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

LOCK = "train.lock"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged; the message names the file."""


class RunDirError(RuntimeError):
    """A run directory cannot be used: another process trains in it, it cannot be written,
    or one of its files is damaged; the message names the directory or file."""


def describe_os_error(e: OSError) -> str:
    """One line naming the cause and the file, for the error message of a stage."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"while writing {e.filename}" if e.filename else f"({e.strerror})"
        return f"disk full {what}: free space, then run the same command again (files written before are intact)"
    return f"{e.strerror}: {e.filename}" if e.filename else str(e)


def _write_temp(path: Path, chunks: tuple[bytes, ...]) -> Path:
    """Write the chunks to a new temporary file next to ``path`` and fsync it; on any failure
    remove it and raise, naming ``path`` (not the temporary) in an OSError."""
    # Not tempfile.mkstemp: its files are private (0600); 0666 lets the umask decide, so a
    # team sharing a cluster folder can read each other's shards, checkpoints and logs.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # one write moves at most ~2 GB
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return tmp


def atomic_write(path: str | Path, *chunks: bytes) -> None:
    """Write the chunks to ``path`` as one atomic replacement (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_write_temp(path, chunks), path)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run's status.json; a folder without one has not started training."""
    path = run_dir / "status.json"
    if not path.exists():
        return {"state": "not started"}
    try:
        status = read_json(path)
    except ValueError as e:  # invalid JSON or UTF-8
        raise RunDirError(f"{path} is damaged ({e}); delete it and train again to resume from the last checkpoint") from None
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        raise RunDirError(f"{path} is damaged (no 'state'); delete it and train again to resume from the last checkpoint")
    return status


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


def read_log_checked(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The whole records of a JSONL log (each with a step and a loss), and what is wrong with
    it: None, or the damaged line that ends them, unless it is the last (a kill cuts that short)."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    records = []
    for i, line in enumerate(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            r = None
        if not (isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float))):
            return records, (None if i == len(lines) - 1 else f"{path} is damaged at line {i + 1} of {len(lines)}")
        records.append(r)
    return records, None


# ----------------------------------------------------------------------------- checkpoints
def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".sha256")


def save_checkpoint(path: str | Path, state: dict[str, Any], previous: str | Path | None = None) -> None:
    """torch.save ``state`` to ``path`` with its sha256 in ``path.sha256``; the checkpoint that
    was at ``path`` becomes ``previous`` (with its checksum).

    Ordered so that a crash or a full disk at any point leaves a checkpoint load_checkpoint
    accepts: the new bytes are complete on disk before anything is renamed, and every file is
    renamed into place only after the checksum that describes it is there."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    tmp = _write_temp(path, (data,))
    try:
        if previous is not None and _sidecar(path).exists() and path.exists():
            atomic_write(_sidecar(Path(previous)), _sidecar(path).read_bytes())
            os.replace(path, previous)
        atomic_write(_sidecar(path), hashlib.sha256(data).hexdigest().encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if a step above failed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    sidecar = _sidecar(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {sidecar.name}: it was not completely written")
    if hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        raise CheckpointError(f"checkpoint {path} is damaged: its sha256 does not match {sidecar.name}")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


# ----------------------------------------------------------------------------- one writer per run
@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock for the block, or raise RunDirError.

    An flock, not a pid file: the kernel releases it when the holder dies, even by SIGKILL, so
    a killed run never blocks its own resume; the file's text only names the holder."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirError(f"cannot write into the run directory {run_dir}: {e.strerror}") from None
    try:
        _lock(fd, run_dir)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        # With the lock held no other process writes here: a temporary file is what a writer
        # killed mid-write left behind (up to a checkpoint's size).
        for tmp in run_dir.glob(".*.tmp"):
            tmp.unlink()
        yield
    finally:
        os.close(fd)


def _lock(fd: int, run_dir: Path) -> None:
    # Retried for a second: run_is_live (the aggregate stage) holds a shared lock for microseconds.
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
        except OSError as e:  # a file system without flock, e.g. Lustre mounted without -o flock
            print(f"warning: cannot lock {run_dir / LOCK} ({e.strerror}); a second run started in this "
                  "directory would not be stopped", file=sys.stderr)
            return
    holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
    raise RunDirError(f"run directory {run_dir} is in use by {holder}: two runs cannot train into one directory; "
                      "wait for it to end, or stop it (the same command then resumes the run)")


def run_is_live(run_dir: Path) -> bool | None:
    """Whether a live process holds the run's lock; None where the file system cannot tell."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
