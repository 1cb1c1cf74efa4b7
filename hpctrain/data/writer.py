"""Writing datasets: shards are written into a hidden temporary directory next to the target and the whole
directory is renamed into place only once the manifest is complete, so a failure (bad input, disk full,
a crashed rank) never leaves a partial dataset behind.

Under MPI every rank writes its own shards (shard i on rank i mod world size) into the shared temporary
directory; rank 0 gathers the shard records, writes the manifest and renames.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.data.format import COMPRESSIONS, MANIFEST, DataError, FieldSpec, Manifest, ShardInfo

log = logging.getLogger(__name__)

# A random-access source of samples: read(start, stop) -> {field name: array of stop-start samples}
Source = Callable[[int, int], dict[str, np.ndarray]]

CHUNK_TARGET_BYTES = 1 << 20  # ~1 MiB chunks: large sequential reads, still fine-grained for shuffling
PIECE_TARGET_BYTES = 64 << 20  # memory bound while converting: at most this much of the source at once
SHARD_TARGET_BYTES = 256 << 20  # default shard size: large files for the file system, one in memory to write


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def choose_chunk_samples(fields: list[FieldSpec], samples_per_shard: int) -> int:
    per_sample = max(1, sum(f.sample_bytes for f in fields))
    return int(max(1, min(samples_per_shard, CHUNK_TARGET_BYTES // per_sample)))


def shard_ranges(num_samples: int, num_shards: int) -> list[tuple[int, int]]:
    """Split [0, num_samples) into ``num_shards`` contiguous ranges whose sizes differ by at most one."""
    if num_shards < 1 or num_samples < num_shards:
        raise DataError(f"cannot split {num_samples} samples into {num_shards} shard(s): need at least one "
                        "sample per shard")
    bounds = np.linspace(0, num_samples, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def write_shard(path: Path, fields: list[FieldSpec], read: Source, start: int, stop: int, chunk_samples: int,
                compression: str) -> ShardInfo:
    """Write samples [start, stop) of ``read`` to one HDF5 shard, reading the source in bounded pieces.

    HDF5 builds the shard in memory and Python writes it out: HDF5 2.0 (and 1.14) crashes the process when
    it closes a file after a failed write (disk full), while Python's own write raises a clean OSError.
    Memory is therefore one shard (``SHARD_TARGET_BYTES`` by default) plus one piece of the input.
    """
    import h5py

    per_sample = max(1, sum(f.sample_bytes for f in fields))
    piece = max(chunk_samples, (PIECE_TARGET_BYTES // per_sample) // chunk_samples * chunk_samples)
    n = stop - start
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        dsets = {}
        for spec in fields:
            dsets[spec.name] = f.create_dataset(
                spec.name, shape=(n, *spec.shape), dtype=spec.dtype,
                chunks=(min(chunk_samples, n), *spec.shape),
                compression=None if compression == "none" else compression)
        for a in range(start, stop, piece):
            b = min(stop, a + piece)
            arrays = read(a, b)
            for spec in fields:
                arr = np.asarray(arrays[spec.name])
                if arr.shape != (b - a, *spec.shape):
                    raise DataError(f"field {spec.name!r}: samples {a}..{b} have shape {arr.shape[1:]}, "
                                    f"expected {spec.shape}")
                dsets[spec.name][a - start:b - start] = arr.astype(spec.dtype, copy=False)
    data = buf.getbuffer()
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return ShardInfo(path.name, n, len(data), hashlib.sha256(data).hexdigest())


def io_reason(e: BaseException) -> str:
    """The short reason of an I/O error, also from HDF5's long messages ("... error message = '...'")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    match = re.search(r"error message = '([^']*)'", str(e))
    return match.group(1) if match else str(e).splitlines()[0]


def _tmp_dir(out: Path, token: str) -> Path:
    return out.parent / f".{out.name}.tmp-{token}"


def commit(tmp: Path, out: Path, manifest: Manifest, overwrite: bool) -> None:
    """Write the manifest into ``tmp`` and move ``tmp`` to ``out``; an old ``out`` is replaced only now."""
    import json

    (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    old = None
    if out.exists():
        if not overwrite:
            raise DataError(f"{out}: already exists; pass --overwrite to replace it")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_dataset(out: str | Path, fields: list[FieldSpec], read: Source, num_samples: int, num_shards: int,
                  compression: str = "none", chunk_samples: int | None = None, inputs: str = "x",
                  targets: str = "y", metadata: dict[str, Any] | None = None, overwrite: bool = False,
                  comm: Any = None) -> Manifest:
    """Write ``num_samples`` samples of ``read`` as ``num_shards`` shards in ``out`` (atomically).

    ``comm`` is an mpi4py communicator (every rank calls this; each writes its own shards) or None.
    """
    out = Path(out)
    if compression not in COMPRESSIONS:
        raise DataError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    ranges = shard_ranges(num_samples, num_shards)
    chunk = chunk_samples or choose_chunk_samples(fields, max(b - a for a, b in ranges))
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    token = comm.bcast(f"{os.getpid()}" if rank == 0 else None, root=0) if comm is not None else str(os.getpid())
    tmp = _tmp_dir(out, token)
    error: str | None = None
    mine: list[tuple[int, ShardInfo]] = []
    try:
        if rank == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        if comm is not None:
            comm.Barrier()
        for i in range(rank, len(ranges), size):
            a, b = ranges[i]
            mine.append((i, write_shard(tmp / shard_name(i), fields, read, a, b, chunk, compression)))
    except DataError as e:
        error = str(e)
    except (OSError, RuntimeError) as e:  # h5py reports failed writes as RuntimeError with the errno inside
        error = f"{out}: writing failed ({io_reason(e)}); is the disk full or the directory read-only?"
    errors = comm.allgather(error) if comm is not None else [error]  # dist: every rank agrees on failure
    gathered = comm.gather(mine, root=0) if comm is not None else [mine]
    first_error = next((e for e in errors if e is not None), None)
    manifest = None
    if first_error is None and rank == 0:
        shards = [info for _, info in sorted(x for part in gathered for x in part)]
        manifest = Manifest(fields, shards, chunk, compression, inputs, targets, metadata or {})
        try:
            commit(tmp, out, manifest, overwrite)
        except OSError as e:
            first_error = f"{out}: writing the manifest failed ({io_reason(e)}); is the disk full?"
        except DataError as e:
            first_error = str(e)
    if comm is not None:
        first_error = comm.bcast(first_error, root=0)
        manifest = comm.bcast(manifest, root=0)
    if first_error is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(first_error, agreed=comm is not None)
    assert manifest is not None
    return manifest
