"""The rank-aware HDF5 reader: block reads in a background thread, exact resumable position.

``ShardedReader.next_batch()`` returns this rank's next batch as numpy arrays. A prefetch thread reads
ahead (``prefetch`` batches) window by window: the window's sample ids are sorted into contiguous runs,
each run is one ``read_direct`` hyperslab read per field (whole chunks, no per-sample HDF5 calls), and the
window is put back into its shuffled order. The position (``state_dict``) is the consumer's, not the
prefetcher's, so what was read ahead but not trained on is read again after a resume.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.data.format import DataError, FieldSpec, Manifest, check_shard, read_manifest
from hpctrain.data.plan import EpochPlan, Remainder, block_ranges

log = logging.getLogger(__name__)


SCATTER_MIN_BYTES = 4096  # fields with larger samples are read straight into their shuffled slots
IOV_MAX = 1024  # buffers per preadv call (Linux limit)


def row_views(arr: np.ndarray) -> list[memoryview]:
    """One writable byte view per sample of ``arr``: the iovecs of a scatter read."""
    flat = memoryview(arr.reshape(len(arr), -1).view(np.uint8)).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
    row = flat.nbytes // max(1, len(arr))
    return [flat[i * row:(i + 1) * row] for i in range(len(arr))]


class _Shard:
    """One open shard: h5py handles, plus the file offset of every chunk of each uncompressed field so that
    reads can bypass HDF5 and go from the page cache straight into the destination (one copy, like a raw
    read). Compressed fields, or files whose chunk index cannot be read, go through h5py."""

    def __init__(self, path: Path, fields: list[FieldSpec]) -> None:
        import h5py

        self.path = path
        try:
            self.h5 = h5py.File(path, "r")
            self.fd = os.open(path, os.O_RDONLY)
        except (OSError, FileNotFoundError) as e:
            raise DataError(f"{path}: cannot open shard ({e})") from None
        self.chunk_offsets: dict[str, tuple[int, np.ndarray] | None] = {}
        for f in fields:
            self.chunk_offsets[f.name] = self._chunk_index(self.h5[f.name])

    @staticmethod
    def _chunk_index(d: Any) -> tuple[int, np.ndarray] | None:
        if d.chunks is None or d.compression is not None or d.shape[0] == 0:
            return None
        rows = d.chunks[0]
        n = -(-d.shape[0] // rows)
        offsets = np.full(n, -1, dtype=np.int64)
        try:
            for k in range(d.id.get_num_chunks()):
                info = d.id.get_chunk_info(k)
                if info.filter_mask != 0:
                    return None
                offsets[info.chunk_offset[0] // rows] = info.byte_offset
        except (AttributeError, RuntimeError, OSError):
            return None
        return (rows, offsets) if (offsets >= 0).all() else None

    def read_run(self, f: FieldSpec, a: int, n: int, out: np.ndarray, dests: np.ndarray,
                 views: list[memoryview] | None = None) -> None:
        """Samples [a, a+n) of field ``f`` into ``out[dests]`` (``views``: ``row_views(out)``, if at hand)."""
        index = self.chunk_offsets[f.name]
        if index is None:
            whole = np.empty((n, *f.shape), dtype=f.dtype)
            self.h5[f.name].read_direct(whole, np.s_[a:a + n])
            out[dests] = whole
            return
        rows, offsets = index
        row = f.sample_bytes
        contiguous = len(dests) < 2 or bool((np.diff(dests) == 1).all())  # unshuffled: one buffer per chunk
        scatter = not contiguous and row >= SCATTER_MIN_BYTES
        tmp = None if contiguous or scatter else np.empty((n, *f.shape), dtype=f.dtype)
        if scatter and views is None:
            views = row_views(out)
        done = 0
        while done < n:
            s = a + done
            chunk, within = divmod(s, rows)
            k = min(n - done, rows - within)  # samples of this run inside this chunk
            offset = int(offsets[chunk]) + within * row
            for c in range(0, k, IOV_MAX):
                m = min(IOV_MAX, k - c)
                lo = done + c
                if contiguous:
                    bufs: list[Any] = [out[int(dests[lo]):int(dests[lo]) + m]]
                elif scatter:  # each sample straight into its shuffled slot
                    bufs = [views[d] for d in dests[lo:lo + m].tolist()]  # type: ignore[index]
                else:  # small samples: one read, then a cheap scatter in memory
                    bufs = [tmp[lo:lo + m]]  # type: ignore[index]
                got = os.preadv(self.fd, bufs, offset + c * row)
                if got != m * row:
                    raise OSError(f"short read: {got} of {m * row} bytes (file truncated?)")
            done += k
        if tmp is not None:
            out[dests] = tmp

    def will_need(self, f: FieldSpec, a: int, n: int) -> None:
        """Ask the kernel to start reading samples [a, a+n) from disk now (cold caches, parallel file
        systems): the next unit's I/O then overlaps this unit's copies."""
        index = self.chunk_offsets[f.name]
        if index is None or not hasattr(os, "posix_fadvise"):
            return
        rows, offsets = index
        for chunk in range(a // rows, (a + n - 1) // rows + 1):
            os.posix_fadvise(self.fd, int(offsets[chunk]), rows * f.sample_bytes, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        self.h5.close()
        os.close(self.fd)


class ShardFiles:
    """Open shard files of one dataset and reads of arbitrary sample ids from them."""

    def __init__(self, root: Path, manifest: Manifest, fields: list[str] | None = None, threads: int = 1) -> None:
        self.root = root
        self.manifest = manifest
        self.fields = [manifest.field(n) for n in (fields or [f.name for f in manifest.fields])]
        sizes = np.array([s.samples for s in manifest.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self._shards: dict[int, _Shard] = {}
        # preadv releases the GIL: with several threads the kernel copies run on several cores at once
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hpctrain-read") if threads > 1 else None
        self.threads = threads

    def _shard(self, index: int) -> _Shard:
        if index not in self._shards:
            self._shards[index] = _Shard(self.root / self.manifest.shards[index].file, self.fields)
        return self._shards[index]

    def empty(self, n: int) -> dict[str, np.ndarray]:
        return {f.name: np.empty((n, *f.shape), dtype=f.dtype) for f in self.fields}

    def read(self, ids: np.ndarray, out: dict[str, np.ndarray] | None = None, at: int = 0,
             views: dict[str, list[memoryview]] | None = None) -> dict[str, np.ndarray]:
        """Samples ``ids`` (any order, repeats allowed) into ``out[name][at:at+len(ids)]``, in that order.

        The ids are sorted into runs of consecutive samples; each run is read once per field and lands
        directly in its slots, so a shuffled window costs one copy."""
        out = self.empty(len(ids)) if out is None else out
        order, runs = self._runs(ids)
        dests = order + at
        for index in {r[0] for r in runs}:
            self._shard(index)  # open files here, not concurrently in the workers

        def work(part: list[tuple[int, int, int, int]]) -> None:
            for index, a, i, j in part:
                shard = self._shards[index]
                for f in self.fields:
                    try:
                        shard.read_run(f, a, int(j - i), out[f.name], dests[i:j],
                                       views.get(f.name) if views else None)
                    except (OSError, KeyError) as e:
                        raise DataError(f"{shard.path}: reading {f.name!r} samples {a}..{a + j - i} failed "
                                        f"({e}); run `hpctrain data validate` on the dataset") from None

        if self._pool is None or len(runs) < 2:
            work(runs)
        else:  # contiguous groups of runs with about the same number of samples each
            cuts = np.searchsorted([r[2] for r in runs], np.linspace(0, len(ids), self.threads + 1)[1:-1])
            edges = [0, *cuts.tolist(), len(runs)]
            futures = [self._pool.submit(work, runs[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
            for future in futures:
                future.result()
        return out

    def _runs(self, ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """Sort ``ids`` into runs of consecutive samples of one shard: (shard, first local sample, i, j)
        with sorted positions [i, j); ``order`` maps sorted positions back to positions in ``ids``."""
        order = np.argsort(ids, kind="stable")
        if len(ids) == 0:
            return order, []
        sorted_ids = ids[order]
        shard_of = np.searchsorted(self.starts, sorted_ids, side="right") - 1
        breaks = np.flatnonzero((np.diff(sorted_ids) != 1) | (np.diff(shard_of) != 0)) + 1
        bounds = np.concatenate([[0], breaks, [len(ids)]]).tolist()
        runs = [(int(shard_of[i]), int(sorted_ids[i] - self.starts[shard_of[i]]), i, j)
                for i, j in zip(bounds[:-1], bounds[1:], strict=True)]
        return order, runs

    def will_need(self, ids: np.ndarray) -> None:
        """Hint the kernel to fetch these samples ahead of ``read`` (best effort, never fails)."""
        try:
            for index, a, i, j in self._runs(ids)[1]:
                for f in self.fields:
                    self._shard(index).will_need(f, a, j - i)
        except (OSError, DataError):
            pass  # the read itself will report a real problem

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()


def open_dataset(root: str | Path, verify: str = "size") -> Manifest:
    """Read the manifest and check every shard (``size``: exists, size, HDF5 layout; ``checksum``: also
    SHA-256; ``none``: manifest only)."""
    manifest = read_manifest(root)
    if verify != "none":
        for shard in manifest.shards:
            check_shard(Path(root), manifest, shard, checksum=verify == "checksum")
    return manifest


_DONE = object()


@dataclass(frozen=True)
class ReaderOptions:
    """Which part of each global batch this rank reads, and how (the data.* keys of the same names)."""

    rank: int
    world: int
    batch_size: int  # per rank
    seed: int
    remainder: Remainder = "drop"
    window: int = 4096  # data.shuffle_window
    block: int = 0  # data.block_samples: 0 = the dataset's chunk size
    prefetch: int = 4
    threads: int = 2  # data.read_threads


class ShardedReader:
    """This rank's training batches from a sharded dataset, epoch after epoch."""

    def __init__(self, root: str | Path, manifest: Manifest, opts: ReaderOptions) -> None:
        self.files = ShardFiles(Path(root), manifest, threads=opts.threads)
        rank, world, batch_size = opts.rank, opts.world, opts.batch_size
        remainder = opts.remainder
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, opts.seed
        self.remainder, self.window, self.prefetch = remainder, opts.window, max(1, opts.prefetch)
        self.block = opts.block or manifest.chunk_samples
        self.blocks = block_ranges([s.samples for s in manifest.shards], self.block)
        self.num_samples = manifest.num_samples
        if remainder == "drop" and self.num_samples < world * batch_size:
            raise DataError(f"{root}: {self.num_samples} samples cannot fill one global batch of "
                            f"{world * batch_size} ({batch_size} per rank x {world} ranks): use fewer ranks, "
                            "a smaller train.batch_size or data.remainder=pad")
        self.history: list[tuple[int, int, int]] = []  # (world, batch size, steps) of earlier rank layouts
        self.epoch, self.steps = 0, 0  # the consumer's position
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ring: list[dict[str, np.ndarray]] | None = None
        self._ring_views: list[dict[str, list[memoryview]]] = []
        self._slot = 0

    # --- position -------------------------------------------------------------------------------------
    def plan(self) -> EpochPlan:
        return EpochPlan(self.blocks, self.seed, self.epoch, self.window, self.remainder, self.history)

    def steps_per_epoch(self) -> int:
        """Steps in a fresh epoch at the current world and batch size."""
        return EpochPlan(self.blocks, self.seed, 0, 1, self.remainder).steps(self.world, self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": [list(h) for h in self.history], "steps": self.steps,
                "world": self.world, "batch_size": self.batch_size, "num_samples": self.num_samples,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise DataError(f"reader state is for {state['num_samples']} samples / seed {state['seed']}, this "
                            f"dataset has {self.num_samples} / seed {self.seed}: resume with the same data")
        self._stop_prefetch()
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.history = [tuple(h) for h in state["history"]]
        if (state["world"], state["batch_size"]) != (self.world, self.batch_size) and self.steps > 0:
            # a new generation: what the old ranks had not consumed is re-partitioned among the new ones
            self.history.append((int(state["world"]), int(state["batch_size"]), self.steps))
            self.steps = 0

    # --- batches --------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of this rank's next step.

        The arrays are views into a reused read buffer: they stay valid until ``prefetch`` + 1 further
        batches have been taken. Copy them to keep them longer."""
        batch = self.next_fields()
        return batch[self.files.manifest.inputs], batch[self.files.manifest.targets]

    def next_fields(self) -> dict[str, np.ndarray]:
        """Every field of this rank's next step."""
        if self._thread is None:
            self._start_prefetch()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        batch, (self.epoch, self.history, self.steps) = item
        return batch

    def _produce(self, epoch: int, history: list, steps: int) -> None:
        try:
            while not self._stop.is_set():
                plan = EpochPlan(self.blocks, self.seed, epoch, self.window, self.remainder, history)
                stream = plan.stream(self.rank, self.world, self.batch_size)
                total = plan.steps(self.world, self.batch_size)
                pos = steps * self.batch_size
                for batch in self._batches(stream, pos, total * self.batch_size):
                    steps += 1
                    after = (epoch, list(history), steps) if steps < total else (epoch + 1, [], 0)
                    while not self._stop.is_set():
                        try:
                            self._queue.put((batch, after), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
                epoch, history, steps = epoch + 1, [], 0
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._queue.put(e)

    def _read_unit(self) -> int:
        """Samples read at once: whole shuffle windows (their ids sort into whole blocks), >= one batch."""
        if self.window > 1:
            return self.window * -(-self.batch_size // self.window)
        return max(self.batch_size, self.block)

    def _batches(self, stream: np.ndarray, pos: int, end: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``stream[pos:end]``, reading unit by unit from the unit that holds ``pos``.

        Each unit is read into the next buffer of a small ring, after the few samples left over from the
        previous unit; batches are views into it, never copies. Reusing buffers matters: fresh 50 MB
        allocations cost page faults and zeroing, as much as the read itself. A buffer is refilled only
        after every batch cut from it has left the queue and the consumer has moved ``prefetch`` + 1
        batches past it (the contract in ``next_batch``)."""
        unit = self._read_unit()
        if self._ring is None:  # allocated once, reused across epochs, with their scatter iovecs
            self._ring = [self.files.empty(unit + self.batch_size)
                          for _ in range(2 + -(-(self.prefetch + 1) * self.batch_size // unit))]
            self._ring_views = [{k: row_views(v) for k, v in slot.items()
                                if v[0].nbytes >= SCATTER_MIN_BYTES} for slot in self._ring]
        ring = self._ring
        next_read = pos // unit * unit
        buf: dict[str, np.ndarray] | None = None
        buf_pos = buf_end = next_read  # stream positions held by buf
        while pos < end:
            if buf_end - pos < self.batch_size:
                keep = max(0, buf_end - pos)
                ids = stream[next_read:next_read + unit]
                new, views = ring[self._slot], self._ring_views[self._slot]  # the slot after the last filled
                self._slot = (self._slot + 1) % len(ring)
                if buf is not None and keep:
                    for k, v in new.items():
                        v[:keep] = buf[k][pos - buf_pos:buf_end - buf_pos]
                self.files.will_need(stream[next_read + unit:next_read + 2 * unit])
                buf = self.files.read(ids, new, at=keep, views=views)
                buf_pos, buf_end = (pos if keep else next_read), next_read + len(ids)
                next_read += unit
                continue
            yield {k: v[pos - buf_pos:pos - buf_pos + self.batch_size] for k, v in buf.items()}  # type: ignore
            pos += self.batch_size

    def _start_prefetch(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.epoch, list(self.history), self.steps),
                                        name="hpctrain-prefetch", daemon=True)
        self._thread.start()

    def _stop_prefetch(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self._stop_prefetch()
        self.files.close()


def eval_ids(num_samples: int, rank: int, world: int) -> np.ndarray:
    """Validation split: contiguous, disjoint, together exactly every sample once (sizes may differ by one)."""
    bounds = np.linspace(0, num_samples, world + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)
