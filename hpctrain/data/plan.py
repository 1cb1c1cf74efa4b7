"""Which samples each rank reads, in which order, for a sharded dataset: pure numpy, no I/O.

An epoch's global order is a permutation of *blocks* (runs of ``block`` consecutive samples inside one
shard, aligned to HDF5 chunks), seeded by (seed, epoch). The order is split into ``world`` contiguous,
equal-size parts, one per rank, each a whole number of batches (the remainder is dropped, or padded by
wrapping around). Each rank then shuffles its part inside windows of ``window`` samples (the in-memory
shuffle buffer). Reads stay large and sequential (whole blocks), while samples still mix within a window.

A rank's position is the number of steps it has taken in the epoch. Changing the world size or batch size
mid-epoch starts a new *generation*: the samples every old rank had not yet consumed, in order, become the
new epoch remainder and are re-partitioned. ``history`` records (world, batch, steps) of the earlier
generations of the epoch, so every rank can recompute the exact same plan from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Remainder = Literal["drop", "pad"]


def block_ranges(shard_sizes: Sequence[int], block: int) -> np.ndarray:
    """(start, stop) global sample ranges of every block, blocks never crossing a shard boundary."""
    ranges = []
    start = 0
    for n in shard_sizes:
        for a in range(0, n, block):
            ranges.append((start + a, start + min(n, a + block)))
        start += n
    return np.asarray(ranges, dtype=np.int64).reshape(-1, 2)


def epoch_order(blocks: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All sample ids of the epoch: blocks in a permutation seeded by (seed, epoch), each block in order."""
    perm = np.random.default_rng([seed, epoch, 17]).permutation(len(blocks))
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in blocks[perm]])


def partition(order: np.ndarray, world: int, batch: int, remainder: Remainder) -> list[np.ndarray]:
    """Contiguous equal parts, each a whole number of ``batch``-sized steps."""
    step = world * batch
    if remainder == "drop":
        usable = len(order) // step * step
        order = order[:usable]
    else:
        usable = -(-len(order) // step) * step
        if usable > len(order):
            order = np.concatenate([order, np.resize(order, usable - len(order))])
    per_rank = usable // world
    return [order[r * per_rank:(r + 1) * per_rank] for r in range(world)]


def window_shuffle(part: np.ndarray, window: int, seed: int, epoch: int, generation: int,
                   rank: int) -> np.ndarray:
    """Permute ``part`` inside consecutive windows of ``window`` samples (identity when window <= 1)."""
    if window <= 1:
        return part
    out = part.copy()
    rng = np.random.default_rng([seed, epoch, generation, rank, 23])
    for a in range(0, len(part), window):
        out[a:a + window] = out[a:a + window][rng.permutation(min(window, len(part) - a))]
    return out


class EpochPlan:
    """The sample order of one epoch for every rank of the current generation."""

    def __init__(self, blocks: np.ndarray, seed: int, epoch: int, window: int, remainder: Remainder,
                 history: Sequence[tuple[int, int, int]] = ()) -> None:
        self.seed, self.epoch, self.window, self.remainder = seed, epoch, window, remainder
        self.history = [tuple(int(v) for v in h) for h in history]
        order = epoch_order(blocks, seed, epoch)
        for generation, (world, batch, steps) in enumerate(self.history):
            streams = self._streams(order, world, batch, generation)
            order = np.concatenate([s[steps * batch:] for s in streams])
        self.remaining = order  # sample ids not consumed by earlier generations, in order

    @property
    def generation(self) -> int:
        return len(self.history)

    def _streams(self, order: np.ndarray, world: int, batch: int, generation: int) -> list[np.ndarray]:
        return [window_shuffle(p, self.window, self.seed, self.epoch, generation, r)
                for r, p in enumerate(partition(order, world, batch, self.remainder))]

    def steps(self, world: int, batch: int) -> int:
        """Steps every rank takes in this generation (the same on every rank)."""
        step = world * batch
        n = len(self.remaining)
        return n // step if self.remainder == "drop" else -(-n // step)

    def stream(self, rank: int, world: int, batch: int) -> np.ndarray:
        """This rank's sample ids for the rest of the epoch, ``steps(world, batch) * batch`` of them."""
        part = partition(self.remaining, world, batch, self.remainder)[rank]
        return window_shuffle(part, self.window, self.seed, self.epoch, self.generation, rank)
