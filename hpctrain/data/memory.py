"""Arrays held in memory by every rank (synthetic data, small sets), batched by a GlobalBatchSampler.

Random access is free here, so the sampler interleaves ranks within each global batch: W ranks with batch B
train on exactly the samples one rank with batch W*B would (the data-parallel equivalence tests rely on it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpctrain.data.sampler import GlobalBatchSampler


class InMemorySource:
    def __init__(self, inputs: np.ndarray, targets: np.ndarray, sampler: GlobalBatchSampler) -> None:
        self.inputs, self.targets, self.sampler = inputs, targets, sampler

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self.sampler.next_indices()
        return self.inputs[idx], self.targets[idx]

    @property
    def epoch(self) -> int:
        return self.sampler.state.epoch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        pass
