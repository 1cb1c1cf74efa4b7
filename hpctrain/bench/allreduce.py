"""`hpctrain bench allreduce`: Horovod's all-reduce against raw MPI and this machine's memcpy limit.

For each message size (float32, sum), interleaved per size so drift in the machine's state hits all alike:
  horovod       hvd.allreduce, no compression: what a training step pays per fused gradient buffer;
  horovod-fp16  the same with Compression.fp16 (half the bytes on the wire, plus two casts);
  mpi           mpi4py Allreduce on numpy buffers: the MPI library's own figure, Horovod's lower bound.
MPI and Horovod are initialised by ``runtime.init`` as for training (same controller, fusion and cycle-time
settings) except that OpenMPI's yield-when-idle stays off: with it on, raw MPI calls made beside Horovod's
background thread often stall ~8 ms, which would understate MPI.

Figures follow nccl-tests: time is the slowest rank's median per call (a collective is as fast as its
slowest rank), algbw = bytes / time, busbw = algbw x 2(n-1)/n (what each rank's links carry in a ring
all-reduce, so it compares directly with a link's or memcpy's bandwidth; 0 for one rank).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import UserError
from hpctrain.files import write_atomic

IMPLS = ("horovod", "horovod-fp16", "mpi")
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
TARGET_S = 0.2  # adaptive --iters: timed seconds per size and implementation
MIN_ITERS, MAX_ITERS = 3, 100_000  # MAX bounds the list of per-call times of the fastest calls
MEMCPY_REPEATS = 5
MEMCPY_LABEL = "memcpy (this machine's limit)"
FP16_MAX_SUM = 1024.0  # fp16 check values are scaled so their sum stays here, far from fp16's 65504 overflow


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``4KB``, ``4K``, ``4KiB``, ``1MB``, ``1.5GB`` (binary: K = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 4096, 4KB, 1MB or 256MB")
    value = float(m.group(1)) * UNITS[m.group(2).upper()]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(nbytes: int) -> str:
    """``4KB``, ``256MB``, ``1GB``: the largest unit that divides ``nbytes`` (the inverse of parse_size)."""
    for unit in ("G", "M", "K"):
        if nbytes >= UNITS[unit] and nbytes % UNITS[unit] == 0:
            return f"{nbytes // UNITS[unit]}{unit}B"
    return f"{nbytes}B"


def parse_impls(text: str) -> list[str]:
    impls = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in impls if s not in IMPLS]
    if unknown or not impls:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of {', '.join(IMPLS)}")
    return list(dict.fromkeys(impls))  # drop repeats, keep the order given


def sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min, min x factor, ... up to max (max itself only if it falls on that grid, as in nccl-tests)."""
    if min_bytes < 4 or min_bytes % 4:
        raise UserError(f"--min-size {min_bytes} B: must be a positive multiple of 4 bytes (float32)")
    if max_bytes < min_bytes:
        raise UserError(f"--max-size {format_size(max_bytes)} is below --min-size {format_size(min_bytes)}")
    if factor < 2:
        raise UserError(f"--factor {factor}: must be >= 2")
    out = [min_bytes]
    while out[-1] * factor <= max_bytes:
        out.append(out[-1] * factor)
    return out


def bus_factor(world_size: int) -> float:
    """busbw / algbw for a ring all-reduce: each rank sends and receives 2(n-1)/n of the buffer."""
    return 2 * (world_size - 1) / world_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-size", type=parse_size, default="4KB", help="smallest message (default 4KB)")
    p.add_argument("--max-size", type=parse_size, default="256MB", help="largest message (default 256MB)")
    p.add_argument("--factor", type=int, default=4, help="each size is the previous one times this (default 4)")
    p.add_argument("--iters", type=int, default=0,
                   help=f"timed calls per size and implementation (0 = about {TARGET_S} s each, "
                        f"at least {MIN_ITERS})")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before the timed ones (default 2)")
    p.add_argument("--impl", type=parse_impls, default=",".join(IMPLS),
                   help=f"comma list of {', '.join(IMPLS)} (default all)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (rank 0)")


def memcpy_bandwidth(src: np.ndarray, dst: np.ndarray) -> float:
    """Bytes per second of np.copyto in one process (a read and a write of each byte): the scale for the
    busbw of ranks that share this machine's memory."""
    np.copyto(dst, src)  # first touch of the pages is not memory bandwidth
    times = []
    for _ in range(MEMCPY_REPEATS):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return src.nbytes / statistics.median(times)


def check(result: Any, expected: float, rtol: float, impl: str, nbytes: int) -> None:
    # Every element holds the same sum, so min and max check them all without a buffer-sized temporary.
    lo, hi = float(result.min()), float(result.max())
    if not (abs(lo - expected) <= rtol * expected and abs(hi - expected) <= rtol * expected):
        raise RuntimeError(f"allreduce {impl} of {format_size(nbytes)} is wrong: values in [{lo}, {hi}], "
                           f"expected {expected} (relative tolerance {rtol})")


def timed(call: Callable[[], Any], n: int) -> list[float]:
    """Per-call seconds of ``n`` back-to-back calls, with no barrier between them (as a training loop)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def timed_adaptive(op: Any, send: np.ndarray, rank: int) -> list[float]:
    """Per-call seconds of back-to-back calls for about TARGET_S of rank 0's time (MIN_ITERS to MAX_ITERS).

    dist: rank 0 says when to stop through the all-reduce itself: it puts 1 in element 0 of its
    contribution (0 on the others), every rank reads the sum and all stop after the same call. A count
    fixed from the warm-up calls cannot adapt when later calls are slower (measured here: 10 us calls
    turning into 8 ms ones, a 98 s loop), and an extra collective per call would distort the timing.
    """
    send[0] = 0.0  # the check already ran: the values summed from now on only carry the flag
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        op()
        times.append(time.perf_counter() - t0)
        if op.result()[0] != 0:
            return times
        if rank == 0 and len(times) >= MIN_ITERS - 1 and (time.perf_counter() - start >= TARGET_S
                                                           or len(times) >= MAX_ITERS - 1):
            send[0] = 1.0


class HorovodAllreduce:
    """hvd.allreduce of ``tensor`` (out of place); the last output is kept for the check, one at a time."""

    def __init__(self, tensor: Any, name: str, fp16: bool) -> None:
        import horovod.torch as hvd

        self.hvd, self.tensor, self.name = hvd, tensor, name
        self.compression = hvd.Compression.fp16 if fp16 else hvd.Compression.none
        self.out: Any = None

    def __call__(self) -> None:
        self.out = None  # freed before the next output is allocated: one buffer-sized output at most
        self.out = self.hvd.allreduce(self.tensor, op=self.hvd.Sum, name=self.name, compression=self.compression)

    def result(self) -> np.ndarray:
        return self.out.numpy()

    def close(self) -> None:
        self.out = None


class MpiAllreduce:
    """mpi4py's buffer Allreduce (no pickling) from ``send`` into ``recv``.

    It runs on the main thread while Horovod's background thread makes its own MPI calls every cycle, as
    any MPI call made beside Horovod during training would. Measured on 2 ranks / 2 cores with OpenMPI
    4.1 and yield_when_idle: calls of 16KB and up often take ~8 ms instead of 10-50 us; they do not with
    yield_when_idle=0, with a 50 ms Horovod cycle, or without Horovod initialised.
    """

    def __init__(self, comm: Any, send: np.ndarray, recv: np.ndarray) -> None:
        from mpi4py import MPI

        self.comm, self.send, self.recv, self.op = comm, send, recv, MPI.SUM

    def __call__(self) -> None:
        self.comm.Allreduce(self.send, self.recv, op=self.op)

    def result(self) -> np.ndarray:
        return self.recv

    def close(self) -> None:
        pass


def run(rank: int, size: int, byte_sizes: list[int], impls: list[str], iters: int, warmup: int,
        mpi_world: Any) -> dict[str, Any]:
    """Every rank runs this; the returned figures are the same on every rank."""
    import horovod.torch as hvd
    import torch

    # One buffer pair at the largest size; each size uses its prefix, so memory stays at two buffers
    # (plus Horovod's output while a call is in flight) whatever the number of sizes.
    count_max = byte_sizes[-1] // 4
    send = np.full(count_max, rank + 1, dtype=np.float32)
    recv = np.zeros(count_max, dtype=np.float32)
    recv.fill(0)  # touch the pages now, not in the first timed call
    send_t = torch.from_numpy(send)  # shares send's memory

    memcpy = memcpy_bandwidth(send, recv) if rank == 0 else 0.0
    memcpy = hvd.broadcast_object(memcpy, root_rank=0, name="hpctrain.bench.memcpy")  # dist

    exact_sum = size * (size + 1) / 2
    # fp16: r + 1 summed over many ranks overflows fp16 (65504 past 361 ranks); a power-of-two scale
    # keeps the inputs exact and the sum small. Each pairwise fp16 add rounds, hence the wider tolerance.
    fp16_scale = 2.0 ** -max(0, math.ceil(math.log2(exact_sum / FP16_MAX_SUM)))
    fp16_rtol = max(1e-3, size * 2.0**-11)

    results = []
    for nbytes in byte_sizes:
        count = nbytes // 4
        for impl in impls:
            op: HorovodAllreduce | MpiAllreduce
            if impl == "mpi":
                send[:count].fill(rank + 1)
                recv[:count].fill(np.nan)  # a call that writes nothing must not pass on an earlier size's sums
                op, expected, rtol = MpiAllreduce(mpi_world, send[:count], recv[:count]), exact_sum, 0.0
            else:
                fp16 = impl == "horovod-fp16"
                scale = fp16_scale if fp16 else 1.0
                send_t[:count].fill_((rank + 1) * scale)
                # dist: the same name on every rank, reused by every call (Horovod's response cache)
                op = HorovodAllreduce(send_t[:count], f"hpctrain.bench.allreduce.{impl}.{nbytes}", fp16)
                expected, rtol = exact_sum * scale, fp16_rtol if fp16 else 0.0

            op()  # verified and untimed; for Horovod also the first negotiation of this tensor name
            check(op.result(), expected, rtol, impl, nbytes)
            timed(op, warmup)
            times = timed(op, iters) if iters else timed_adaptive(op, send, rank)
            op.close()
            per_rank = hvd.allgather_object((statistics.median(times), len(times)),
                                            name=f"hpctrain.bench.time.{impl}.{nbytes}")  # dist
            if len({k for _, k in per_rank}) != 1:
                raise RuntimeError(f"allreduce {impl} of {format_size(nbytes)}: ranks made different numbers "
                                   f"of calls {[k for _, k in per_rank]}")
            slowest = max(t for t, _ in per_rank)  # dist: a collective is as fast as its slowest rank
            n = len(times)
            algbw = nbytes / slowest / 1e9
            results.append({"bytes": nbytes, "impl": impl, "time_s": slowest, "algbw_GBps": algbw,
                            "busbw_GBps": algbw * bus_factor(size), "iters": n})
    return {"memcpy_GBps": memcpy / 1e9, "memcpy_bytes": send.nbytes, "results": results}


def versions(controller: str) -> dict[str, str]:
    import horovod
    import mpi4py
    import torch

    import hpctrain

    v = {"hpctrain": hpctrain.__version__, "python": platform.python_version(), "torch": torch.__version__,
         "horovod": horovod.__version__, "mpi4py": mpi4py.__version__, "numpy": np.__version__,
         "controller": controller}
    if controller == "mpi":
        from mpi4py import MPI

        v["mpi_library"] = MPI.Get_library_version().splitlines()[0].strip("\x00 \t")  # NUL-padded
    return v


def report(results: dict[str, Any]) -> str:
    n = results["world_size"]
    hosts = ", ".join(f"{h} ({k})" for h, k in results["hosts"].items())
    lines = [f"allreduce (float32, sum) on {n} rank{'s' * (n > 1)}: {hosts}; "
             f"Horovod {results['versions']['horovod']}, {results['versions']['controller']} controller",
             f"time = slowest rank's median per call; algbw = bytes / time; "
             f"busbw = algbw x 2(n-1)/n = algbw x {bus_factor(n):.2f}",
             f"{MEMCPY_LABEL:<36}{results['memcpy_GBps']:>10.2f} GB/s   "
             f"(np.copyto of {format_size(results['memcpy_bytes'])}, one process, median of {MEMCPY_REPEATS})",
             f"{'size':<8}{'impl':<14}{'iters':>8}{'time (us)':>14}{'algbw GB/s':>12}{'busbw GB/s':>12}"]
    for r in results["results"]:
        lines.append(f"{format_size(r['bytes']):<8}{r['impl']:<14}{r['iters']:>8}{r['time_s'] * 1e6:>14.2f}"
                     f"{r['algbw_GBps']:>12.3f}{r['busbw_GBps']:>12.3f}")
    by = {(r["bytes"], r["impl"]): r["time_s"] for r in results["results"]}
    hvd_impls = [i for i in ("horovod", "horovod-fp16") if any(k[1] == i for k in by)]
    if hvd_impls and any(k[1] == "mpi" for k in by):
        lines.append(f"{'size':<8}" + "".join(f"{i + '/mpi time':>{len(i) + 12}}" for i in hvd_impls))
        for nbytes in dict.fromkeys(k[0] for k in by):
            lines.append(f"{format_size(nbytes):<8}" + "".join(
                f"{by[nbytes, i] / by[nbytes, 'mpi']:>{len(i) + 11}.2f}x" for i in hvd_impls))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from hpctrain import runtime
    from hpctrain.config import CommConfig

    byte_sizes = sizes(args.min_size, args.max_size, args.factor)
    if args.iters < 0 or args.warmup < 0:
        raise UserError("--iters and --warmup must be >= 0")
    # dist: the set-up of training, except OpenMPI's yield-when-idle: with it, a raw MPI call made while
    # Horovod's background thread runs often stalls ~8 ms (measured), which would make raw MPI a straw man.
    rt = runtime.init(CommConfig(yield_when_idle=False))
    mpi_world = None
    if "mpi" in args.impl:
        if rt.controller != "mpi":
            raise UserError("--impl mpi needs MPI: launch with mpirun or srun, or pass "
                            "--impl horovod,horovod-fp16 under horovodrun --gloo", agreed=True)
        from mpi4py import MPI

        mpi_world = MPI.COMM_WORLD

    import horovod.torch as hvd

    hosts = Counter(hvd.allgather_object(socket.gethostname(), name="hpctrain.bench.hosts"))  # dist
    results = {"world_size": rt.size, "hosts": dict(sorted(hosts.items()))}
    results.update(run(rt.rank, rt.size, byte_sizes, args.impl, args.iters, args.warmup, mpi_world))
    results["command"] = " ".join(sys.argv)
    results["versions"] = versions(rt.controller)
    if rt.is_root:
        print(report(results), flush=True)
        if args.json:
            write_atomic(Path(args.json), (json.dumps(results, indent=2) + "\n").encode())
    return 0
