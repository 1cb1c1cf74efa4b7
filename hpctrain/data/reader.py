"""The rank-aware HDF5 reader: block reads in a background thread, exact resumable position.

``ShardedReader.next_batch()`` returns this rank's next batch as numpy arrays. A prefetch thread reads
ahead (``prefetch`` batches) window by window: the window's sample ids are sorted into contiguous runs,
each run is one ``read_direct`` hyperslab read per field (whole chunks, no per-sample HDF5 calls), and the
window is put back into its shuffled order. The position (``state_dict``) is the consumer's, not the
prefetcher's, so what was read ahead but not trained on is read again after a resume.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.data.format import DataError, Manifest, check_shard, read_manifest
from hpctrain.data.plan import EpochPlan, Remainder, block_ranges

log = logging.getLogger(__name__)


class ShardFiles:
    """Open shard files of one dataset and contiguous reads of arbitrary sample ids from them."""

    def __init__(self, root: Path, manifest: Manifest, fields: list[str] | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.fields = [manifest.field(n) for n in (fields or [f.name for f in manifest.fields])]
        sizes = np.array([s.samples for s in manifest.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self._files: dict[int, Any] = {}

    def _dataset(self, shard: int, name: str) -> Any:
        import h5py

        if shard not in self._files:
            path = self.root / self.manifest.shards[shard].file
            try:
                self._files[shard] = h5py.File(path, "r")
            except (OSError, FileNotFoundError) as e:
                raise DataError(f"{path}: cannot open shard ({e})") from None
        return self._files[shard][name]

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``ids`` (any order, repeats allowed) as {field: array}, in that order."""
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        shard_of = np.searchsorted(self.starts, sorted_ids, side="right") - 1
        breaks = np.flatnonzero((np.diff(sorted_ids) != 1) | (np.diff(shard_of) != 0)) + 1
        bounds = np.concatenate([[0], breaks, [len(ids)]])
        out = {f.name: np.empty((len(ids), *f.shape), dtype=f.dtype) for f in self.fields}
        for i, j in zip(bounds[:-1], bounds[1:], strict=True):
            shard = int(shard_of[i])
            a = int(sorted_ids[i] - self.starts[shard])
            for f in self.fields:
                try:
                    self._dataset(shard, f.name).read_direct(out[f.name], np.s_[a:a + (j - i)], np.s_[i:j])
                except (OSError, KeyError) as e:
                    path = self.root / self.manifest.shards[shard].file
                    raise DataError(f"{path}: reading {f.name!r} samples {a}..{a + j - i} failed ({e}); "
                                    "run `hpctrain data validate` on the dataset") from None
        for name, arr in out.items():  # back to the requested order
            unsorted = np.empty_like(arr)
            unsorted[order] = arr
            out[name] = unsorted
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def open_dataset(root: str | Path, verify: str = "size") -> Manifest:
    """Read the manifest and check every shard (``size``: exists, size, HDF5 layout; ``checksum``: also
    SHA-256; ``none``: manifest only)."""
    manifest = read_manifest(root)
    if verify != "none":
        for shard in manifest.shards:
            check_shard(Path(root), manifest, shard, checksum=verify == "checksum")
    return manifest


_DONE = object()


class ShardedReader:
    """This rank's training batches from a sharded dataset, epoch after epoch."""

    def __init__(self, root: str | Path, manifest: Manifest, rank: int, world: int, batch_size: int, seed: int,
                 remainder: Remainder = "drop", window: int = 4096, block: int = 0, prefetch: int = 4) -> None:
        self.files = ShardFiles(Path(root), manifest)
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        self.remainder, self.window, self.prefetch = remainder, window, max(1, prefetch)
        self.block = block or manifest.chunk_samples
        self.blocks = block_ranges([s.samples for s in manifest.shards], self.block)
        self.num_samples = manifest.num_samples
        if remainder == "drop" and self.num_samples < world * batch_size:
            raise DataError(f"{root}: {self.num_samples} samples cannot fill one global batch of "
                            f"{world * batch_size} ({batch_size} per rank x {world} ranks): use fewer ranks, "
                            "a smaller train.batch_size or data.remainder=pad")
        self.epoch, self.history, self.steps = 0, [], 0  # the consumer's position
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        """(inputs, targets) of this rank's next step."""
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
        """Batches of ``stream[pos:end]``, reading unit by unit from the unit that holds ``pos``."""
        unit = self._read_unit()
        next_read = pos // unit * unit
        buf: dict[str, np.ndarray] | None = None
        buf_pos = next_read  # stream position of the first sample in buf
        while pos < end:
            have = 0 if buf is None else len(next(iter(buf.values()))) - (pos - buf_pos)
            if have < self.batch_size:
                new = self.files.read(stream[next_read:next_read + unit])
                if buf is not None:  # keep the unconsumed tail of the previous unit
                    new = {k: np.concatenate([buf[k][pos - buf_pos:], v]) for k, v in new.items()}
                    buf_pos = pos
                buf = new
                next_read += unit
                continue
            yield {k: v[pos - buf_pos:pos - buf_pos + self.batch_size] for k, v in buf.items()}
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
