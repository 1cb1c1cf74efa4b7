"""Where a rank finds out who it is: launcher detection, Horovod initialisation, device, threads, seeds.

Launcher detection is a pure function of an environment mapping (testable from recorded environments).
MPI and Horovod are initialised once, in :func:`init`, and only there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hpctrain.config import CommConfig, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LaunchError(UserError):
    """The processes were started in a way hpctrain cannot run under (wrong launcher or flags)."""


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher told this process through its environment."""

    launcher: str  # a key of LAUNCHERS ("horovodrun-gloo" | "horovodrun" | "openmpi" | "slurm"), "single", or
    # a key of FOREIGN_LAUNCHERS (refused by check_launch)
    rank: int
    local_rank: int
    size: int
    local_size: int | None  # None where the launcher does not say (Slurm step with uneven tasks)


# One table per launcher: which variables carry rank, local rank, size and local size. Tried in order:
# horovodrun's Gloo mode first (it sets its own variables and no MPI ones), then OpenMPI started by horovodrun,
# then by mpirun (also inside a Slurm allocation, where SLURM_PROCID is inherited from the batch step), then a
# Slurm step.
_OMPI = {"rank": "OMPI_COMM_WORLD_RANK", "local_rank": "OMPI_COMM_WORLD_LOCAL_RANK",
         "size": "OMPI_COMM_WORLD_SIZE", "local_size": "OMPI_COMM_WORLD_LOCAL_SIZE"}
LAUNCHERS: dict[str, dict[str, str]] = {
    "horovodrun-gloo": {"rank": "HOROVOD_RANK", "local_rank": "HOROVOD_LOCAL_RANK",
                        "size": "HOROVOD_SIZE", "local_size": "HOROVOD_LOCAL_SIZE"},
    "horovodrun": _OMPI,
    "openmpi": _OMPI,
    "slurm": {"rank": "SLURM_PROCID", "local_rank": "SLURM_LOCALID",
              "size": "SLURM_NTASKS", "local_size": "SLURM_NTASKS_PER_NODE"},
}
# Values a launcher's table also needs before it matches. horovodrun without --gloo sets no variable of its own:
# it runs `mpirun --tag-output -mca pml ob1 -mca btl ^openib ...` (horovod/runner/mpi_run.py, always, for Open
# MPI), and mpirun hands those settings to every rank as OMPI_MCA_* variables (recorded under both launchers).
# A plain mpirun has all three only if the user typed all three.
SIGNATURES: dict[str, dict[str, str]] = {
    "horovodrun": {"OMPI_MCA_orte_tag_output": "1", "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "^openib"},
}
# A Slurm *step* (srun) has a step id; the batch script itself has SLURM_PROCID=0 and SLURM_NTASKS=N
# too, and a training started there directly would wait forever for N-1 ranks that never come.
SLURM_STEP_VAR = "SLURM_STEP_ID"
# Launchers whose processes never become one Horovod job: each initialises MPI alone (a singleton), so N of
# them train N independent one-rank copies into the same run.dir, each at 1/N of the machine, and exit 0.
# Looked for only when no launcher above matched; refused by check_launch when they say there are several.
FOREIGN_LAUNCHERS: dict[str, dict[str, str]] = {
    "torchrun": {"rank": "RANK", "local_rank": "LOCAL_RANK", "size": "WORLD_SIZE", "local_size": "LOCAL_WORLD_SIZE"},
    "mpiexec (MPICH / Intel MPI)": {"rank": "PMI_RANK", "local_rank": "MPI_LOCALRANKID", "size": "PMI_SIZE",
                                    "local_size": "MPI_LOCALNRANKS"},
    "mpirun (MVAPICH2)": {"rank": "MV2_COMM_WORLD_RANK", "local_rank": "MV2_COMM_WORLD_LOCAL_RANK",
                          "size": "MV2_COMM_WORLD_SIZE", "local_size": "MV2_COMM_WORLD_LOCAL_SIZE"},
    "jsrun (LSF)": {"rank": "JSM_NAMESPACE_RANK", "local_rank": "JSM_NAMESPACE_LOCAL_RANK",
                    "size": "JSM_NAMESPACE_SIZE", "local_size": "JSM_NAMESPACE_LOCAL_SIZE"},
}
WORKING_LAUNCHERS = "mpirun -np N, horovodrun -np N (or --gloo), or srun --mpi=pmix inside Slurm"


def _int(env: Mapping[str, str], var: str, launcher: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise LaunchError(f"{var}={env[var]!r} is not an integer (set by {launcher}?)") from None


def _info(name: str, table: Mapping[str, str], env: Mapping[str, str]) -> LaunchInfo:
    rank, size = _int(env, table["rank"], name), _int(env, table["size"], name)
    local_rank = _int(env, table["local_rank"], name) if table["local_rank"] in env else 0
    local_size = None
    if table["local_size"] in env and env[table["local_size"]].isdigit():
        local_size = int(env[table["local_size"]])
    if not 0 <= rank < size:
        raise LaunchError(f"{table['rank']}={rank} is outside 0..{size - 1} ({table['size']}={size})")
    return LaunchInfo(name, rank, local_rank, size, local_size)


def detect_launcher(env: Mapping[str, str]) -> LaunchInfo:
    """Identify the launcher from ``env``; ``HPCTRAIN_LAUNCHER`` forces one (tests, unusual sites)."""
    forced = env.get("HPCTRAIN_LAUNCHER")
    if forced is not None and forced not in (*LAUNCHERS, "single"):
        raise LaunchError(f"HPCTRAIN_LAUNCHER={forced!r}: expected one of {', '.join([*LAUNCHERS, 'single'])}")
    for name, table in LAUNCHERS.items():
        if forced is not None and forced != name:
            continue
        if forced is None and any(env.get(k) != v for k, v in SIGNATURES.get(name, {}).items()):
            continue
        present = [var for var in (table["rank"], table["size"]) if var in env]
        if not present:
            if forced == name:
                raise LaunchError(f"HPCTRAIN_LAUNCHER={name} but {table['rank']} is not set")
            continue
        if len(present) == 1:
            missing = table["size"] if present[0] == table["rank"] else table["rank"]
            raise LaunchError(f"{present[0]} is set but {missing} is not: incomplete {name} environment")
        if name == "slurm" and SLURM_STEP_VAR not in env and forced != "slurm":
            raise LaunchError("running inside a Slurm batch script, not a job step: "
                              "launch the ranks with `srun --mpi=pmix hpctrain ...`")
        return _info(name, table, env)
    if forced is None:
        for name, table in FOREIGN_LAUNCHERS.items():
            # only the size decides: RANK or LOCAL_RANK alone are common names a shell may hold for other reasons
            if table["size"] in env and table["rank"] in env and _int(env, table["size"], name) > 1:
                return _info(name, table, env)
    return LaunchInfo("single", 0, 0, 1, 1)


def check_launch(info: LaunchInfo, env: Mapping[str, str], elastic: bool | None = None) -> None:
    """Reject launcher/controller combinations known to crash or hang, before MPI is touched.
    ``elastic`` is the training config's ``fault.elastic`` (None: not a training run, not checked)."""
    if info.launcher in FOREIGN_LAUNCHERS:
        size_var = FOREIGN_LAUNCHERS[info.launcher]["size"]
        raise LaunchError(f"{size_var}={info.size}: started by {info.launcher}, whose processes do not form one "
                          f"Horovod job (each would train alone, all into the same run.dir): launch with "
                          f"{WORKING_LAUNCHERS}")
    if info.launcher in ("openmpi", "horovodrun", "slurm") \
            and env.get("HOROVOD_CPU_OPERATIONS", "").lower() == "gloo":
        raise LaunchError(f"HOROVOD_CPU_OPERATIONS=gloo under {info.launcher} segfaults in Horovod 0.28: "
                          "unset it, or launch with `horovodrun --gloo`")
    if elastic is True and env.get("HOROVOD_ELASTIC") != "1":
        raise LaunchError("fault.elastic = true needs an elastic launch: horovodrun -np N --min-np MIN "
                          "--max-np MAX --host-discovery-script SCRIPT hpctrain train ...")
    if elastic is False and env.get("HOROVOD_ELASTIC") == "1":
        raise LaunchError("horovodrun started an elastic job (--min-np/--max-np/--host-discovery-script) but "
                          "fault.elastic is false: add fault.elastic=true")
    if info.launcher == "horovodrun-gloo" and "HOROVOD_GLOO_RENDEZVOUS_ADDR" not in env and info.size > 1:
        raise LaunchError("HOROVOD_RANK/HOROVOD_SIZE are set but no Gloo rendezvous address: "
                          "launch with horovodrun, or unset the HOROVOD_* variables")


def mpirun_command(ranks: int, *options: str) -> list[str]:
    """``mpirun -np N`` for ranks on this machine (the studies, benchmarks and tests start theirs so), with
    ``--oversubscribe`` beyond its cores, where Open MPI would refuse to start them otherwise."""
    over = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
    return ["mpirun", "-np", str(ranks), *over, *options]


def cpu_threads(local_size: int) -> int:
    """Intra-op threads for a CPU rank: its share of the node's cores, or its binding if it is bound."""
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if allowed < cores:  # the launcher bound this rank: use exactly what it was given
        return max(1, allowed)
    return max(1, cores // max(1, local_size))


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
# wake-ups interrupt the compute threads (measured on the CNN with 2 intra-op threads on 2 cores: 9,100
# involuntary switches of the second compute thread in 12 s at 1 ms, 1,070 at 20 ms). A one-off collective
# (start, checkpoint, evaluation) waits at most this long.
SINGLE_RANK_CYCLE_MS = 20.0


def _horovod_env(comm: CommConfig, env: MutableMapping[str, str], watchdog_s: float, elastic: bool, size: int) -> None:
    """Horovod reads its tuning knobs from the environment once, at hvd.init()."""
    env["HOROVOD_FUSION_THRESHOLD"] = str(int(comm.fusion_threshold_mb * 1024 * 1024))
    if elastic:
        # Horovod 0.28 segfaults in hvd.init() during an elastic reset when both the fusion threshold and
        # the cycle time are pinned (measured: either alone survives). Elastic runs keep Horovod's cycle time.
        if comm.cycle_time_ms != CommConfig.cycle_time_ms:
            log.warning("comm.cycle_time_ms is ignored with fault.elastic = true (Horovod 0.28 crashes on "
                        "re-initialisation when it is set)")
    else:
        cycle_ms = max(comm.cycle_time_ms, SINGLE_RANK_CYCLE_MS) if size == 1 else comm.cycle_time_ms
        env["HOROVOD_CYCLE_TIME"] = str(cycle_ms)
    if watchdog_s > 0:
        # Horovod's coordinator then logs which ranks have not joined a stalled all-reduce before the
        # watchdog (hpctrain.checkpoint.Watchdog) ends the job.
        env.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(max(1, int(watchdog_s / 2))))


def keep_freed_memory(mb: int) -> bool:
    """Make glibc malloc keep freed blocks of up to ``mb`` MiB (and up to 4x that at the top of the heap)
    for reuse; False where the C library is not glibc or refuses.

    By default glibc unmaps large freed blocks and trims the heap, so a training step, which allocates the
    same batch and activation sizes every time, faults its memory in afresh each step: measured on the
    1-rank CNN, 5,500 page faults a second and ~6% of the time in the kernel (page faults are dear in a VM);
    with this, 0.4 a second and 15% more samples/s. The process keeps what its peak step used anyway."""
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


def init(comm: CommConfig, env: MutableMapping[str, str] | None = None, watchdog_s: float = 0.0,
         elastic: bool = False, malloc_keep_mb: int = 0) -> Runtime:
    """Initialise MPI/Horovod once, pin the device and CPU threads; call before building anything."""
    env = os.environ if env is None else env
    info = detect_launcher(env)
    check_launch(info, env, elastic)
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and comm.yield_when_idle:
        # dist: OpenMPI busy-polls while waiting; on CPU runs that steals the cores the model computes
        # on (0.7x DDP throughput on 2 ranks / 2 cores without this). Read by MPI_Init, so set it here.
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    _horovod_env(comm, env, watchdog_s, elastic, info.size)
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


def mpi_comm() -> Any:
    """MPI.COMM_WORLD for tools that use MPI without Horovod (dataset writers), or None for one process."""
    info = detect_launcher(os.environ)
    check_launch(info, os.environ)
    if info.size == 1:
        return None
    if info.launcher == "horovodrun-gloo":
        raise LaunchError("this command uses MPI: launch it with mpirun or srun, not horovodrun --gloo")
    from mpi4py import MPI

    return MPI.COMM_WORLD


def refresh(rt: Runtime) -> Runtime:
    """``rt`` with rank and sizes as Horovod sees them now (they change after an elastic reset)."""
    import dataclasses

    import horovod.torch as hvd

    return dataclasses.replace(rt, rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                               local_size=hvd.local_size())


def _mpi_world() -> Any:
    """MPI.COMM_WORLD if this process initialised MPI and has not finalised it, else None."""
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.Is_initialized() and not MPI.Is_finalized() else None


def world_size() -> int:
    world = _mpi_world()
    return world.Get_size() if world is not None else 1


def world_rank() -> int:
    world = _mpi_world()
    return world.Get_rank() if world is not None else 0


def abort_world(code: int) -> None:
    """End every rank of the MPI job now, with ``code``; returns only when there is no MPI world."""
    world = _mpi_world()
    if world is not None and world.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        world.Abort(code)


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raises a UserError on any rank, every rank raises the first one.

    For checks whose outcome may differ between ranks (a file visible on one node only): the job then
    ends with exit code 2 on every rank instead of one rank failing while the others wait in a collective.
    """
    import horovod.torch as hvd

    result, error = None, None
    try:
        result = fn()
    except UserError as e:
        error = str(e)
    errors = hvd.allgather_object(error, name="hpctrain.agree")  # dist: named, or ranks with
    # and without an error (str vs NoneType, Horovod's default name) would wait in different collectives
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise UserError(first, agreed=True)
    return result  # type: ignore[return-value]


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


def rank_ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"ranks 0-2,5"``; ``[3]`` -> ``"rank 3"``."""
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return ("rank " if len(ranks) == 1 else "ranks ") + text


def info_report(comm: CommConfig) -> str | None:
    """What a user needs to debug a launch; collective (every rank reports), returned on rank 0 only."""
    import platform
    import socket

    import h5py
    import horovod
    import horovod.torch as hvd
    import mpi4py
    import numpy as np
    import torch

    rt = init(comm)
    row = (f"rank {rt.rank}/{rt.size}  local {rt.local_rank}/{rt.local_size}  host {socket.gethostname()}  "
           f"pid {os.getpid()}  device {rt.device}  threads {rt.threads}")
    rows = hvd.allgather_object((socket.gethostname(), row), name="hpctrain.info")  # dist
    if not rt.is_root:
        return None
    hosts = [host for host, _ in rows]
    nodes = sorted(set(hosts), key=hosts.index)  # node k: the k-th host in rank order
    mpi_lib = "n/a (Gloo controller)"
    if rt.controller == "mpi":
        from mpi4py import MPI

        # Open MPI ends its version string with a NUL byte, which would make the report binary to grep
        mpi_lib = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()
    built = {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built(), "nccl": hvd.nccl_built(),
             "cuda": hvd.cuda_built()}
    lines = [
        f"hpctrain    {__import__('hpctrain').__version__} (python {platform.python_version()})",
        f"torch       {torch.__version__} (cuda available: {torch.cuda.is_available()})",
        f"horovod     {horovod.__version__} built with: "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in built.items()),
        f"mpi4py      {mpi4py.__version__}; MPI library: {mpi_lib}",
        f"numpy       {np.__version__}; h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
        f"launcher    {rt.launch.launcher}; controller {rt.controller}; world size {rt.size}",
        "settings    " + "  ".join(f"{k}={os.environ.get(k, '-')}" for k in (
            "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "OMPI_MCA_mpi_yield_when_idle",
            "HOROVOD_CPU_OPERATIONS")),
        "hosts       " + ", ".join(f"{h} ({rank_ranges([r for r, x in enumerate(hosts) if x == h])})"
                                  for h in nodes),
        *(row.replace(f"host {h}  ", f"host {h}  node {nodes.index(h)}/{len(nodes)}  ", 1) for h, row in rows),
    ]
    return "\n".join(lines)
