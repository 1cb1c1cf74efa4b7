"""What a rank used over its measured steps: CPU seconds, involuntary context switches, the step-time spread.

Wall-clock samples/s on a shared machine moves with the neighbours; these move less, and tell a slowdown a
neighbour causes (more involuntary switches, a long p90, the same CPU per sample) from one a rank's own
work causes (more CPU per sample). ``resource.getrusage(RUSAGE_SELF)`` counts every thread of the process
(Horovod's background thread, the prefetch thread), user + system time. hpctrain's metrics and the
benchmark's peer loops both measure through :class:`StepUsage`, so their figures compare like for like.
On a GPU the step clock is read without waiting for the device, so the percentiles are those of the host's
steps (the queue evens them out); the throughput figures beside them are read with the device idle.
"""

from __future__ import annotations

import resource
from array import array
from typing import Any

import numpy as np

KEEP_STEPS = 65_536  # step durations kept for the percentiles: the most recent ones (0.5 MiB)
PERCENTILES = (10, 50, 90)
COLUMNS = 2 + len(PERCENTILES)  # one rank's row for the gather: cpu s, involuntary switches, percentiles (ms)


def _snapshot() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nivcsw


class StepUsage:
    """Per-rank usage from :meth:`start` (the end of the last warm-up step) to :meth:`finish` (the end of
    the last measured step); the clock of each step in between comes from the caller's step clock."""

    def __init__(self, keep: int = KEEP_STEPS) -> None:
        self._keep = keep
        self._durations = array("d")
        self._begin: tuple[float, int] | None = None
        self._end: tuple[float, int] | None = None
        self._last = 0.0

    def start(self, now: float) -> None:
        self._durations = array("d")
        self._begin, self._end = _snapshot(), None
        self._last = now

    def step(self, now: float) -> None:
        """A measured step ended at ``now`` (perf_counter seconds)."""
        self._durations.append(now - self._last)
        self._last = now
        if len(self._durations) >= 2 * self._keep:  # amortised: drop the older half now and then
            del self._durations[:self._keep]

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (a validation run between steps) out of the next step's duration."""
        self._last += seconds

    def finish(self) -> None:
        """The last measured step ended: the CPU and switch counts stop here (the first call counts)."""
        if self._begin is not None and self._end is None:
            self._end = _snapshot()

    def row(self) -> list[float]:
        """This rank's figures (:data:`COLUMNS` of them) for a gather across ranks: CPU seconds and
        involuntary switches over the measured steps, then the step-time percentiles in ms (NaN if none)."""
        if self._begin is None:
            return [float("nan")] * COLUMNS
        end = self._end or _snapshot()
        kept = np.frombuffer(self._durations, dtype=np.float64)[-self._keep:]
        pct = np.percentile(kept, PERCENTILES) * 1000 if len(kept) else [float("nan")] * len(PERCENTILES)
        return [end[0] - self._begin[0], float(end[1] - self._begin[1]), *map(float, pct)]


def summarise(table: np.ndarray, steps: int, batch_size: int) -> dict[str, Any]:
    """The job's figures from every rank's :meth:`StepUsage.row` (``table``: ranks x COLUMNS): per rank,
    CPU seconds per sample and involuntary switches per step (min/mean/max over ranks); the step-time
    percentiles of the slowest rank at each (a synchronous step is as slow as its slowest rank)."""
    table = np.asarray(table, dtype=np.float64)
    samples = max(steps, 1) * batch_size

    def stats(v: np.ndarray) -> dict[str, float]:
        return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}

    return {"cpu_s_per_sample": stats(table[:, 0] / samples),
            "involuntary_switches_per_step": stats(table[:, 1] / max(steps, 1)),
            "step_ms_percentiles": {f"p{p}": float(table[:, 2 + i].max()) for i, p in enumerate(PERCENTILES)}}
