"""The collectives a ZeRO step can use on CPU tensors, side by side: the extra peak resident memory each
call needs beyond its input and output, and its time. This is the measurement behind hpctrain's choice, on
CPU tensors, of an in-place all-reduce instead of Horovod's reduce-scatter and of in-place broadcasts
instead of its all-gather (hpctrain/optim/zero.py; docs/memory.md, "Transient buffers").

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=131072 mpirun --allow-run-as-root -np 2 \
        -x MALLOC_MMAP_THRESHOLD_ -x MALLOC_TRIM_THRESHOLD_ .venv/bin/python scaling_studies/zero_collectives.py

The malloc settings are the ones `hpctrain bench memory` gives every run: freed blocks go back to the system
at once, so the peak is what the call itself needed. Peak memory is the kernel's high-water mark
(VmHWM, reset through /proc/self/clear_refs before each call) minus the resident memory just before it.
The variants run interleaved, round after round; times are medians over rounds and ranks take the slowest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import horovod
import horovod.torch as hvd
import torch


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure(call: Callable[[], object]) -> tuple[float, float]:
    """(extra peak MiB, seconds) of one call; what it returns is dropped after the peak is read."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") - before
    del out
    return peak / 1024, seconds


def variants(flat: torch.Tensor, piece: torch.Tensor) -> dict[str, Callable[[], object]]:
    rank, size = hvd.rank(), hvd.size()
    per_rank = flat.numel() // size

    def allreduce_keep_piece() -> torch.Tensor:
        hvd.allreduce_(flat, op=hvd.Average, name="ar")
        return flat[rank * per_rank:(rank + 1) * per_rank].clone()

    def broadcasts() -> None:
        handles = [hvd.broadcast_async_(flat[r * per_rank:(r + 1) * per_rank], root_rank=r, name=f"bc.{r}")
                   for r in range(size)]
        for h in handles:
            hvd.synchronize(h)

    return {
        "reduce-scatter (hvd.reducescatter)": lambda: hvd.reducescatter(flat, op=hvd.Average, name="rs"),
        "in-place all-reduce, keep the piece": allreduce_keep_piece,
        "all-gather (hvd.allgather)": lambda: hvd.allgather(piece, name="ag"),
        "in-place broadcast from each owner": broadcasts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=24.0, help="bucket size in MiB (fp32)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    hvd.init()
    size = hvd.size()
    n = int(args.mib * (1 << 20) / 4) // size * size
    flat = torch.randn(n)
    piece = flat[:n // size].clone()
    calls = variants(flat, piece)
    for call in calls.values():  # warm-up: Horovod's buffers and Open MPI's connections set up once
        measure(call)
    peaks: dict[str, list[float]] = {name: [] for name in calls}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            hvd.barrier()
            peak, seconds = measure(call)
            peaks[name].append(peak)
            times[name].append(seconds)
    # the rank that needed most memory and took longest speaks for the call
    worst = [(name, max(hvd.allgather_object(max(peaks[name]))),
              max(hvd.allgather_object(statistics.median(times[name])))) for name in calls]
    if hvd.rank() == 0:
        print(f"# {size} ranks, bucket {n * 4 / (1 << 20):.1f} MiB fp32, {args.rounds} interleaved rounds, "
              f"torch {torch.__version__}, horovod {horovod.__version__}")
        print(f"{'collective':38s} {'extra peak MiB':>14s} {'ms (median)':>12s}")
        for name, peak, seconds in worst:
            print(f"{name:38s} {peak:14.1f} {seconds * 1e3:12.1f}")


if __name__ == "__main__":
    main()
