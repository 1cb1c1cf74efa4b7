"""Which launcher started this process, read from its environment alone: rank, local rank, sizes, and the
launches hpctrain refuses. No torch, Horovod or MPI import, so it can run before any of them (and be tested
from recorded environments)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hpctrain.errors import UserError


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
