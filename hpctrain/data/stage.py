"""Copy a dataset to node-local storage once per node: local rank 0 copies and verifies, the others wait.

The copy goes to ``<dest>/<name>-<manifest hash>``: a changed dataset gets a new directory, and a complete
copy from an earlier job on the same node is reused after a size check. The copy is written under a
temporary name and renamed, so a job killed mid-copy leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from hpctrain.data.format import MANIFEST, DataError, validate

log = logging.getLogger(__name__)


def staged_path(src: Path, dest_root: Path) -> Path:
    digest = hashlib.sha256((src / MANIFEST).read_bytes()).hexdigest()[:12]
    return dest_root / f"{src.resolve().name}-{digest}"


def copy_verified(src: Path, dest_root: Path) -> Path:
    """Copy ``src`` under ``dest_root`` (if not already there) and verify every checksum of the copy."""
    try:
        validate(src, checksum=False)
        target = staged_path(src, dest_root)
        if target.exists():
            validate(target, checksum=False)
            return target
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = dest_root / f".{target.name}.tmp-{os.getpid()}"
        try:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
            validate(tmp, checksum=True)
            os.replace(tmp, target)
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
            copy_verified(src, dest_root)
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
