"""Process set-up for one rank: Horovod's environment knobs and ``hvd.init``, device and CPU threads, glibc
malloc reuse, seeds, rank-prefixed logging.

MPI and Horovod are initialised once, in :func:`init`, and only there. Who the rank is comes from
:mod:`hpctrain.launchers`; collective checks and aborting the world from :mod:`hpctrain.dist`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hpctrain.config import CommConfig, FaultConfig
from hpctrain.dist import agree
from hpctrain.launchers import LaunchError, LaunchInfo, check_launch, cpu_threads, detect_launcher

log = logging.getLogger(__name__)
T = TypeVar("T")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank (dropout masks, augmentation) derived from the run seed."""
    return (seed * 1_000_003 + rank * 7919 + 1) % 2**63


@dataclass
class Runtime:
    """This rank's place in the job, after Horovod is initialised."""

    launch: LaunchInfo
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: Any  # torch.device
    threads: int
    controller: str  # "mpi" | "gloo"
    elastic: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def agree(self, fn: Callable[[], T]) -> T:
        """:func:`agree` on ``fn``; in an elastic run just ``fn()``, because a worker that joins a running
        elastic job must not enter collectives the others are not in (each rank then fails on its own)."""
        return fn() if self.elastic else agree(fn)


# Horovod's background thread wakes every cycle even when it has nothing to do. With one rank nothing waits
# on it (no gradient all-reduces; hpctrain skips its own per-step collectives there), but at a 1 ms cycle its
# wake-ups interrupt the compute threads (docs/performance.md, "Where the time goes", has the measurements).
# A one-off collective (start, checkpoint, evaluation) waits at most this long.
SINGLE_RANK_CYCLE_MS = 20.0


def _horovod_env(comm: CommConfig, env: MutableMapping[str, str], fault: FaultConfig | None, size: int) -> None:
    """Horovod reads its tuning knobs from the environment once, at hvd.init(). ``fault`` None: a tool's
    own short run (no watchdog, not elastic)."""
    env["HOROVOD_FUSION_THRESHOLD"] = str(int(comm.fusion_threshold_mb * 1024 * 1024))
    watchdog_s = fault.watchdog_s if fault else 0.0
    if fault and fault.elastic:
        if fault.peer_timeout_s > 0:
            # The survivors of a lost worker learn of it when Gloo's wait for its data times out (then
            # they reset and carry on): before fault.peer_timeout_s would end them as for a lost job
            env.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(max(1, int(fault.peer_timeout_s / 2))))
        # Horovod 0.28 segfaults in hvd.init() during an elastic reset when both the fusion threshold and
        # the cycle time are pinned (measured: either alone survives). Elastic runs keep Horovod's cycle time.
        if comm.cycle_time_ms != CommConfig.cycle_time_ms:
            log.warning("comm.cycle_time_ms is ignored with fault.elastic = true (Horovod 0.28 crashes on "
                        "re-initialisation when it is set)")
    else:
        cycle_ms = max(comm.cycle_time_ms, SINGLE_RANK_CYCLE_MS) if size == 1 else comm.cycle_time_ms
        env["HOROVOD_CYCLE_TIME"] = str(cycle_ms)
    if comm.hierarchical:
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1"
    if watchdog_s > 0:
        # Horovod's coordinator then logs which ranks have not joined a stalled all-reduce before the
        # watchdog (hpctrain.checkpoint.Watchdog) ends the job.
        env.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(max(1, int(watchdog_s / 2))))


def hierarchical_ignored(nccl_built: bool, on_gpu: bool, size: int, local_size: int) -> str | None:
    """Why Horovod 0.28 ignores HOROVOD_HIERARCHICAL_ALLREDUCE here, or None where it is used. Its only user
    is the NCCL hierarchical all-reduce (operations.cc forces the flag off in builds whose GPU all-reduce is
    not NCCL or DDL, and off on one node); CPU tensors take the flat MPI or Gloo all-reduce either way."""
    if not nccl_built:
        return "this Horovod was built without NCCL (Horovod turns it off)"
    if not on_gpu:
        return "the tensors are on the CPU (only the NCCL GPU all-reduce is hierarchical)"
    if size == local_size:
        return "all ranks are on one node"
    return None


def keep_freed_memory(mb: int) -> bool:
    """Make glibc malloc keep freed blocks of up to ``mb`` MiB (and up to 4x that at the top of the heap)
    for reuse; False where the C library is not glibc or refuses.

    By default glibc unmaps large freed blocks and trims the heap, so a training step, which allocates the
    same batch and activation sizes every time, faults its memory in afresh each step (page faults are dear
    in a VM; docs/performance.md has what it costs). The process keeps what its peak step used anyway."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_bytes, trim_bytes = malloc_thresholds(mb)
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_bytes)) and bool(mallopt(m_trim_threshold, trim_bytes))


def malloc_thresholds(mb: int) -> tuple[int, int]:
    """glibc's mmap and trim thresholds in bytes for ``run.malloc_keep_mb = mb`` (also given to other
    processes as MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ by `bench compare`)."""
    return mb << 20, 4 * mb << 20


def init(comm: CommConfig, env: MutableMapping[str, str] | None = None, fault: FaultConfig | None = None,
         malloc_keep_mb: int = 0) -> Runtime:
    """Initialise MPI/Horovod once, pin the device and CPU threads; call before building anything.
    ``fault`` None: no watchdog and not elastic (the tools' own short runs)."""
    env = os.environ if env is None else env
    elastic = bool(fault and fault.elastic)
    info = detect_launcher(env)
    check_launch(info, env, elastic)
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and comm.yield_when_idle:
        # dist: OpenMPI busy-polls while waiting; on CPU runs that steals the cores the model computes
        # on (docs/performance.md). Read by MPI_Init, so set it here.
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    _horovod_env(comm, env, fault, info.size)
    if malloc_keep_mb and not keep_freed_memory(malloc_keep_mb):
        log.warning("run.malloc_keep_mb: this C library has no glibc mallopt; using its defaults")

    import horovod.torch as hvd

    controller = choose_controller(info.launcher, hvd.mpi_built())
    if controller == "gloo":
        hvd.init()  # dist: Gloo controller, rendezvous through horovodrun (or none, one process); no MPI
    else:
        import mpi4py

        mpi4py.rc.initialize = True
        mpi4py.rc.thread_level = "multiple"  # dist: Horovod's background thread calls MPI
        from mpi4py import MPI

        hvd.init(comm=MPI.COMM_WORLD)  # dist: the one place MPI and Horovod are initialised

    if hvd.size() != info.size:
        raise LaunchError(f"{info.launcher} started {info.size} ranks but Horovod sees {hvd.size()}: "
                          + ("under Slurm use `srun --mpi=pmix` (pmi2 does not work with this OpenMPI)"
                             if info.launcher == "slurm" else "check the launcher and its MPI"))
    local_size = hvd.local_size()
    if comm.hierarchical and hvd.rank() == 0:
        why = hierarchical_ignored(bool(hvd.nccl_built()), on_gpu, hvd.size(), local_size)
        if why:
            log.warning("comm.hierarchical = true has no effect: %s; the all-reduce stays flat", why)
    if on_gpu:
        device = torch.device("cuda", info.local_rank)  # dist: local rank from the launcher, one GPU each
        torch.cuda.set_device(device)
        threads = torch.get_num_threads()
    else:
        device = torch.device("cpu")
        threads = cpu_threads(local_size)
        torch.set_num_threads(threads)
    return Runtime(info, hvd.rank(), hvd.size(), hvd.local_rank(), local_size, device, threads, controller,
                   elastic)


def choose_controller(launcher: str, mpi_built: bool) -> str:
    """Horovod's controller: Gloo under horovodrun --gloo, and for one process when Horovod was built
    without MPI (a workstation or one-GPU box with no MPI installed); MPI otherwise."""
    if launcher == "horovodrun-gloo" or (launcher == "single" and not mpi_built):
        return "gloo"
    if not mpi_built:
        raise LaunchError(f"launched by {launcher} but this Horovod was built without MPI: rebuild it with "
                          "HOROVOD_WITH_MPI=1 (make setup), or launch with horovodrun --gloo")
    return "mpi"


def refresh(rt: Runtime) -> Runtime:
    """``rt`` with rank and sizes as Horovod sees them now (they change after an elastic reset)."""
    import dataclasses

    import horovod.torch as hvd

    return dataclasses.replace(rt, rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                               local_size=hvd.local_size())


class RankFormatter(logging.Formatter):
    def __init__(self, rank: int, size: int) -> None:
        width = len(str(max(size - 1, 0)))
        super().__init__(f"[%(asctime)s rank {rank:>{width}}/{size}] %(levelname)s %(name)s: %(message)s",
                         datefmt="%H:%M:%S")


def setup_logging(rank: int, size: int, all_ranks: bool = False, level: int = logging.INFO) -> None:
    """Configure the ``hpctrain`` logger (never the root logger): INFO on rank 0, WARNING elsewhere."""
    logger = logging.getLogger("hpctrain")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RankFormatter(rank, size))
    logger.addHandler(handler)
    logger.setLevel(level if (rank == 0 or all_ranks) else logging.WARNING)
    logger.propagate = False
