"""Writing datasets: shards are written into a hidden temporary directory next to the target and the whole
directory is renamed into place only once the manifest is complete, so a failure (bad input, disk full,
a crashed rank) never leaves a partial dataset behind.

Under MPI every rank writes its own shards (shard i on rank i mod world size) into the shared temporary
directory; rank 0 gathers the shard records, writes the manifest and renames.

SIGINT and SIGTERM only set a flag while a dataset is written; the writer looks at it between blocks of
about 1 MiB and stops there with :class:`Interrupted`, having removed the temporary directory. A Python
``KeyboardInterrupt`` cannot do this: raised wherever the signal lands, it can land in a callback h5py runs
during a write (a weakref clean-up), where Python prints "Exception ignored" and the write carries on.
A writer killed outright (SIGKILL, a lost node) leaves its temporary directory; the next writer of the same
dataset removes it once the PID in its name no longer runs on this host.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain import files
from hpctrain.data.format import COMPRESSIONS, MANIFEST, DataError, FieldSpec, Manifest, ShardInfo

log = logging.getLogger(__name__)

# A random-access source of samples: read(start, stop) -> {field name: array of stop-start samples}
Source = Callable[[int, int], dict[str, np.ndarray]]

CHUNK_TARGET_BYTES = 1 << 20  # ~1 MiB chunks: large sequential reads, still fine-grained for shuffling
PIECE_TARGET_BYTES = 64 << 20  # memory bound while converting: at most this much of the source at once
SHARD_TARGET_BYTES = 256 << 20  # default shard size: large files for the file system, one in memory to write
BLOCK_TARGET_BYTES = 1 << 20  # written to HDF5 at a time (one chunk, as a rule): a signal waits ~0.1 s of gzip
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; mpirun turns its own SIGINT into SIGTERM for the ranks


class Interrupted(KeyboardInterrupt):
    """The writer stopped on a signal (:data:`STOP_SIGNALS`); the message says what became of the output.

    A ``KeyboardInterrupt`` so that nothing catching ``Exception`` on the way up turns it into a failure.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """Set by :data:`STOP_SIGNALS` while installed; :meth:`check` raises :class:`Interrupted` once it is."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, "interrupted")

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield self
            return
        previous: dict[int, Any] = {}
        try:
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup and background jobs ignore SIGINT: keep it so
                    previous[sig] = signal.signal(sig, self._handle)
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


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
                compression: str, check: Callable[[], None] = lambda: None) -> ShardInfo:
    """Write samples [start, stop) of ``read`` to one HDF5 shard, reading the source in bounded pieces.

    HDF5 builds the shard in memory and Python writes it out: HDF5 2.0 (and 1.14) crashes the process when
    it closes a file after a failed write (disk full), while Python's own write raises a clean OSError.
    Memory is therefore one shard (``SHARD_TARGET_BYTES`` by default) plus one piece of the input.
    ``check`` is called between blocks of whole chunks (``BLOCK_TARGET_BYTES``); it stops the write by raising.
    """
    import h5py

    per_sample = max(1, sum(f.sample_bytes for f in fields))
    piece = max(chunk_samples, (PIECE_TARGET_BYTES // per_sample) // chunk_samples * chunk_samples)
    # whole chunks per block, so every chunk is still written (and compressed) once, as with one write
    block = max(chunk_samples, (BLOCK_TARGET_BYTES // per_sample) // chunk_samples * chunk_samples)
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
            check()
            b = min(stop, a + piece)
            arrays = read(a, b)
            for spec in fields:
                arr = np.asarray(arrays[spec.name])
                if arr.shape != (b - a, *spec.shape):
                    raise DataError(f"field {spec.name!r}: samples {a}..{b} have shape {arr.shape[1:]}, "
                                    f"expected {spec.shape}")
                arr = arr.astype(spec.dtype, copy=False)
                for c in range(0, b - a, block):
                    check()
                    dsets[spec.name][a - start + c:a - start + min(b - a, c + block)] = arr[c:c + block]
    check()
    data = buf.getbuffer()
    return ShardInfo(path.name, n, len(data), files.write_synced(path, data))


def io_reason(e: BaseException) -> str:
    """The short reason of an I/O error, also from HDF5's long messages ("... error message = '...'")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    match = re.search(r"error message = '([^']*)'", str(e))
    return match.group(1) if match else str(e).splitlines()[0]


def _tmp_dir(out: Path, token: str) -> Path:
    return out.parent / f".{out.name}.tmp-{token}"


def _token() -> str:
    """PID and host of the writer, for the names of its temporaries: a later writer can tell whether it runs."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    try:  # a zombie (ended, not yet reaped: mpirun's killed ranks, for a moment) writes nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


# what follows ".NAME." in a temporary's name; older writers named no host (they ran on this one, as a rule)
LEFTOVER = re.compile(r"(?P<kind>tmp|old)-(?P<pid>\d+)(?:@(?P<host>.+))?")


def clean_leftovers(out: Path) -> list[Path]:
    """Remove the temporaries a dead writer of ``out`` left beside it (killed before it could clean up).

    A temporary whose writer may still run (its PID runs, or it ran on another host) is only named in a
    warning, as is the previous dataset an ``--overwrite`` moved aside and was killed before it could
    replace. Returns what was removed.
    """
    host = socket.gethostname()
    prefix = f".{out.name}."
    removed = []
    for path in sorted(out.parent.glob(glob.escape(prefix) + "*")):
        m = LEFTOVER.fullmatch(path.name[len(prefix):])
        if m is None or not path.is_dir():
            continue
        pid, where = int(m["pid"]), m["host"] or host
        if where != host or _runs(pid):
            log.warning("%s: left by another writer of %s (PID %d on %s) that may still be running; "
                        "remove it once that writer has ended", path, out, pid, where)
        elif m["kind"] == "old" and not out.exists():
            log.warning("%s: the previous %s, moved aside by an --overwrite that was killed before it "
                        "finished; rename it back to %s to keep it", path, out.name, out)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s: partial output of a writer that no longer runs (PID %d)", path, pid)
            removed.append(path)
    return removed


def commit(tmp: Path, out: Path, manifest: Manifest, overwrite: bool, token: str | None = None) -> None:
    """Write the manifest into ``tmp`` and move ``tmp`` to ``out``; an old ``out`` is replaced only now."""
    import json

    (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    files.replace_dir(tmp, out, token or _token())


@dataclass(frozen=True)
class WriteOptions:
    """How a dataset is laid out (the ``hpctrain data shard|synth`` flags of the same names)."""

    shards: int | None = None  # None: about SHARD_TARGET_BYTES each
    compression: str = "none"
    chunk_samples: int | None = None  # None: about 1 MiB chunks
    inputs: str = "x"  # field fed to the model
    targets: str = "y"  # field the loss compares against
    metadata: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False


def default_shards(fields: list[FieldSpec], num_samples: int) -> int:
    per_sample = sum(f.sample_bytes for f in fields)
    return max(1, min(num_samples, -(-num_samples * per_sample // SHARD_TARGET_BYTES)))


def write_dataset(out: str | Path, fields: list[FieldSpec], read: Source, num_samples: int,
                  opts: WriteOptions = WriteOptions(), comm: Any = None) -> Manifest:
    """Write ``num_samples`` samples of ``read`` in ``out`` (atomically), laid out as ``opts`` says.

    ``comm`` is an mpi4py communicator (every rank calls this; each writes its own shards) or None.

    Raises:
        DataError: bad input, or the write failed; nothing is left behind.
        Interrupted: SIGINT or SIGTERM arrived; the partial output is removed, an existing ``out`` kept.
    """
    out = Path(out)
    compression, overwrite = opts.compression, opts.overwrite
    num_shards = opts.shards or default_shards(fields, num_samples)
    if compression not in COMPRESSIONS:
        raise DataError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    ranges = shard_ranges(num_samples, num_shards)
    chunk = opts.chunk_samples or choose_chunk_samples(fields, max(b - a for a, b in ranges))
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    token = comm.bcast(_token() if rank == 0 else None, root=0) if comm is not None else _token()
    tmp = _tmp_dir(out, token)
    stop = StopFlag()
    with stop.installed():
        error: str | None = None
        signum: int | None = None
        mine: list[tuple[int, ShardInfo]] = []
        try:
            if rank == 0:
                out.parent.mkdir(parents=True, exist_ok=True)
                clean_leftovers(out)
                tmp.mkdir()
            if comm is not None:
                comm.Barrier()
            for i in range(rank, len(ranges), size):
                a, b = ranges[i]
                mine.append((i, write_shard(tmp / shard_name(i), fields, read, a, b, chunk, compression,
                                            stop.check)))
        except Interrupted as e:
            signum = e.signum
            if rank == 0:  # dist: now, not after the ranks agree: mpirun SIGKILLs them 1 s after its SIGTERM
                shutil.rmtree(tmp, ignore_errors=True)
        except DataError as e:
            error = str(e)
        except (OSError, RuntimeError) as e:  # h5py reports failed writes as RuntimeError with the errno inside
            error = f"{out}: writing failed ({io_reason(e)}); is the disk full or the directory read-only?"
        # dist: every rank agrees on the outcome; an interrupt on any rank stops them all
        outcomes = comm.allgather((signum, error)) if comm is not None else [(signum, error)]
        gathered = comm.gather(mine, root=0) if comm is not None else [mine]
        signum = next((s for s, _ in outcomes if s is not None), None)
        first_error = next((e for _, e in outcomes if e is not None), None)
        manifest = None
        if signum is None and first_error is None and rank == 0:
            shards = [info for _, info in sorted(x for part in gathered for x in part)]
            manifest = Manifest(fields, shards, chunk, compression, opts.inputs, opts.targets, dict(opts.metadata))
            try:
                commit(tmp, out, manifest, overwrite, token)
            except OSError as e:
                first_error = f"{out}: writing the manifest failed ({io_reason(e)}); is the disk full?"
            except DataError as e:
                first_error = str(e)
        if comm is not None:
            first_error = comm.bcast(first_error, root=0)
            manifest = comm.bcast(manifest, root=0)
        if signum is not None or first_error is not None:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if signum is not None:
                kept = f"the existing {out} is unchanged" if out.exists() else f"{out} was not written"
                raise Interrupted(signum, f"removed partial output {tmp}; {kept}")
            raise DataError(str(first_error), agreed=comm is not None)
    if stop.signum is not None:  # it came after the last check: the dataset is whole, so it stays
        raise Interrupted(stop.signum, f"{out} was already complete and is kept")
    assert manifest is not None
    return manifest
