"""Copy a dataset to node-local storage once per node: local rank 0 copies and verifies, the others wait.

The copy goes to ``<dest>/<name>-<manifest hash>``: a changed dataset gets a new directory. A copy from an
earlier job on the same node is reused when its manifest is the source's and every shard has its recorded
size; a stale or partial one is replaced. A copy is written under a temporary name, checksummed, and renamed
into place, so a job killed mid-copy leaves nothing that looks complete, and two jobs staging on one node at
once never see each other's half-written files: the second to finish uses the first one's copy, and a stale
copy is moved aside (not deleted under a job still reading it: its open files stay readable) before the new
one takes its name. Each copy records who made it (``.staged.json``: host, local rank, pid, time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hpctrain.data.format import MANIFEST, DataError, validate

log = logging.getLogger(__name__)
RECORD = ".staged.json"


def staged_path(src: Path, dest_root: Path) -> Path:
    digest = hashlib.sha256((src / MANIFEST).read_bytes()).hexdigest()[:12]
    return dest_root / f"{src.resolve().name}-{digest}"


def _reusable(src: Path, target: Path) -> bool:
    """A complete copy of ``src``: the same manifest bytes, and every shard of the recorded size."""
    if not target.exists():
        return False
    try:
        if (target / MANIFEST).read_bytes() != (src / MANIFEST).read_bytes():
            raise DataError(f"{target / MANIFEST}: differs from the source's")
        validate(target, checksum=False)
        return True
    except (DataError, OSError) as e:
        log.warning("staged copy %s is stale or partial (%s): replacing it", target, e)
        return False


def _install(tmp: Path, src: Path, target: Path) -> None:
    """Move the verified copy ``tmp`` to ``target``, unless another job put a good copy there meanwhile."""
    try:
        os.replace(tmp, target)  # atomic; fails if a non-empty target appeared
        return
    except OSError:
        if _reusable(src, target):
            return  # another job on this node finished first: its copy is as good as ours
    stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
    os.replace(target, stale)
    os.replace(tmp, target)
    shutil.rmtree(stale, ignore_errors=True)


def copy_verified(src: Path, dest_root: Path, local_rank: int = 0) -> Path:
    """Copy ``src`` under ``dest_root`` (unless a complete copy is there) and verify every checksum of it."""
    try:
        validate(src, checksum=False)
        target = staged_path(src, dest_root)
        if _reusable(src, target):
            return target
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = dest_root / f".{target.name}.tmp-{os.getpid()}"
        try:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
            validate(tmp, checksum=True)
            (tmp / RECORD).write_text(json.dumps({"host": socket.gethostname(), "local_rank": local_rank,
                                                  "pid": os.getpid(), "source": str(src.resolve()),
                                                  "time": time.time()}))
            _install(tmp, src, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
    except OSError as e:
        raise DataError(f"{dest_root}: staging {src} failed ({e.strerror or e}); is the disk full?") from None


def stage(src: str | Path, dest_root: str | Path, local_rank: int, barrier: Callable[[], None]) -> Path:
    """Collective: every rank calls it; returns the node-local path of the dataset."""
    src, expanded = Path(src), os.path.expandvars(str(dest_root))
    if "$" in expanded:
        raise DataError(f"staging directory {dest_root!r}: a variable in it is not set on this node")
    dest_root = Path(expanded)
    error = None
    if local_rank == 0:
        try:
            copy_verified(src, dest_root, local_rank)
            log.info("staged %s to %s", src, staged_path(src, dest_root))
        except DataError as e:
            error = e
    barrier()  # dist: the other ranks of the node wait for the copy (errors are agreed by the caller)
    if error is not None:
        raise error
    target = staged_path(src, dest_root)
    if not (target / MANIFEST).exists():
        raise DataError(f"{target}: staged copy is missing on this node (did local rank 0 fail?)")
    return target
