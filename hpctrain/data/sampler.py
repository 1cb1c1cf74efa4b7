"""Global-batch sampling: which samples each rank trains on at each step, with an exact, resumable position.

Every epoch has one permutation of all sample indices, seeded by (seed, epoch), identical on every rank.
Step k of an epoch consumes the global batch ``perm[p : p + B * world]`` (``p`` = samples consumed so far)
and rank r takes its ``r``-th slice of ``B``. So the ranks' parts are disjoint and equal in size, every rank
runs the same number of steps, and W ranks with batch B see exactly the samples 1 rank with batch W*B sees.
The position is a count of global samples, so a run can resume with a different number of ranks: the rest
of the epoch is re-partitioned among the new ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order; a pure function of (num_samples, seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


@dataclass
class SamplerState:
    epoch: int = 0
    consumed: int = 0  # global samples consumed in this epoch


class GlobalBatchSampler:
    """Yields this rank's sample indices for each step; ``state_dict`` captures the exact position."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 remainder: Literal["drop", "pad"] = "drop") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.remainder = remainder
        self.global_batch = batch_size * world_size
        if remainder == "drop" and num_samples < self.global_batch:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {self.global_batch} "
                             f"({batch_size} per rank x {world_size} ranks): use fewer ranks or a smaller "
                             "batch, or data.remainder=pad")
        self.state = SamplerState()
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def steps_per_epoch(self, consumed: int = 0) -> int:
        """Full steps left in an epoch from position ``consumed`` (pad counts a final partial batch)."""
        left = self.num_samples - consumed
        return -(-left // self.global_batch) if self.remainder == "pad" else left // self.global_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.num_samples, self.seed, epoch)
            self._perm_epoch = epoch
        return self._perm

    def next_indices(self) -> np.ndarray:
        """This rank's indices for the next step, advancing the position (and the epoch when it ends)."""
        perm = self._permutation(self.state.epoch)
        start = self.state.consumed + self.rank * self.batch_size
        # pad wraps around to the epoch's start: the last global batch is always full on every rank
        idx = perm[np.arange(start, start + self.batch_size) % self.num_samples]
        self.state.consumed += self.global_batch
        if self.steps_per_epoch(self.state.consumed) <= 0:  # no full step left: the epoch is over
            self.state = SamplerState(self.state.epoch + 1, 0)
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "consumed": self.state.consumed, "num_samples": self.num_samples,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for {state['num_samples']} samples / seed {state['seed']}, "
                             f"not {self.num_samples} / {self.seed}")
        self.state = SamplerState(int(state["epoch"]), int(state["consumed"]))
