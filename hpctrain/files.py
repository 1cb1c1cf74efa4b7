"""Files written atomically (a temporary file beside the target, fsynced, renamed over it: a reader never
sees half a file, and a crash or a full disk leaves the previous version), and text or JSON Lines files read
with one-line errors naming the file and line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_synced(path: Path, data: bytes | memoryview) -> str:
    """Write, flush and fsync ``data`` to ``path``; its SHA-256, of the bytes meant (a later corruption of the
    file then shows as a mismatch)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: Path, error: type[Exception], missing: str = "not found") -> str:
    """The text of ``path``; what cannot be read raises ``error`` with one line naming the file."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None


def read_jsonl(path: Path, error: type[Exception], missing: str = "not found") -> Iterator[tuple[str, Any]]:
    """(``file:line``, value) for every non-blank line of a JSON Lines file; ``error`` names the bad line."""
    for n, line in enumerate(read_text(path, error, missing).splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None


def replace_dir(new: Path, dest: Path, tag: str) -> None:
    """Rename the finished directory ``new`` to ``dest``. An existing ``dest`` is moved aside first and removed
    after, so a complete version is missing for two renames at most; ``tag`` names the aside copy."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{tag}"
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
