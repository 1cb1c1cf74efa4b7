"""Launcher detection from environments recorded under each launcher (trimmed to the relevant part)."""

import pytest

from hpctrain.launchers import LaunchError, check_launch, cpu_threads, detect_launcher
from hpctrain.runtime import choose_controller, rank_seed

# `srun --mpi=pmix -n 4 --ntasks-per-node=2` step, rank 3 on the second node
SLURM_STEP = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
              "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "1", "PMIX_RANK": "3"}
# the batch script itself: a rank/size pair but no step
SLURM_BATCH = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}
# `mpirun -np 2`, rank 1
OPENMPI = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_NODE_RANK": "0"}
# `horovodrun -np 2` (MPI mode: it runs mpirun, whose command line it fixes), rank 1
HOROVODRUN_MPI = {**OPENMPI, "OMPI_MCA_orte_tag_output": "1", "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "^openib",
                  "OMPI_MCA_hwloc_base_binding_policy": "none", "OMPI_MCA_rmaps_base_mapping_policy": "slot"}
# `torchrun --nproc_per_node 2`, rank 1
TORCHRUN = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
            "ROLE_RANK": "1", "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "8f33ec5f", "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_USE_AGENT_STORE": "True", "OMP_NUM_THREADS": "1"}
# `mpiexec -n 2` of MPICH or Intel MPI (Hydra), rank 0
HYDRA = {"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2", "PMI_FD": "6"}
# `horovodrun --gloo -np 2`, rank 0
HOROVOD_GLOO = {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "2",
                "HOROVOD_CROSS_RANK": "0", "HOROVOD_CROSS_SIZE": "1", "HOROVOD_CONTROLLER": "gloo",
                "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1",
                "HOROVOD_GLOO_RENDEZVOUS_PORT": "33333"}


def test_slurm_step():
    info = detect_launcher(SLURM_STEP)
    assert (info.launcher, info.rank, info.local_rank, info.size, info.local_size) == ("slurm", 3, 1, 4, 2)


def test_slurm_batch_script_is_refused_with_advice():
    with pytest.raises(LaunchError, match="srun --mpi=pmix"):
        detect_launcher(SLURM_BATCH)


def test_openmpi():
    info = detect_launcher(OPENMPI)
    assert (info.launcher, info.rank, info.local_rank, info.size, info.local_size) == ("openmpi", 1, 1, 2, 2)


def test_mpirun_inside_a_slurm_allocation_is_openmpi():
    info = detect_launcher({**SLURM_BATCH, **OPENMPI})
    assert info.launcher == "openmpi" and info.size == 2


def test_horovodrun_is_told_from_mpirun_by_the_mpirun_flags_it_always_passes():
    info = detect_launcher(HOROVODRUN_MPI)
    assert (info.launcher, info.rank, info.size) == ("horovodrun", 1, 2)
    assert detect_launcher({**OPENMPI, "OMPI_MCA_pml": "ob1"}).launcher == "openmpi"  # a user's own flag
    assert choose_controller("horovodrun", True) == "mpi"


def test_horovodrun_gloo():
    info = detect_launcher(HOROVOD_GLOO)
    assert (info.launcher, info.rank, info.size, info.local_size) == ("horovodrun-gloo", 0, 2, 2)


def test_single_process():
    info = detect_launcher({"PATH": "/usr/bin"})
    assert (info.launcher, info.rank, info.size) == ("single", 0, 1)


@pytest.mark.parametrize("env, message", [
    ({"OMPI_COMM_WORLD_RANK": "0"}, "OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not"),
    ({"HOROVOD_SIZE": "2"}, "HOROVOD_SIZE is set but HOROVOD_RANK is not"),
    ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "is not an integer"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"}, "outside 0..1"),
    ({"HPCTRAIN_LAUNCHER": "pbs"}, "expected one of"),
    ({"HPCTRAIN_LAUNCHER": "slurm"}, "SLURM_PROCID is not set"),
])
def test_broken_environments(env, message):
    with pytest.raises(LaunchError, match=message):
        detect_launcher(env)


@pytest.mark.parametrize("env, launcher, variable", [
    (TORCHRUN, "torchrun", "WORLD_SIZE=2"),
    (HYDRA, "mpiexec (MPICH / Intel MPI)", "PMI_SIZE=2"),
    ({"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "4"}, "mpirun (MVAPICH2)", "MV2_COMM_WORLD_SIZE=4"),
    ({"JSM_NAMESPACE_RANK": "0", "JSM_NAMESPACE_SIZE": "6"}, "jsrun (LSF)", "JSM_NAMESPACE_SIZE=6"),
])
def test_launchers_whose_processes_cannot_form_one_job_are_refused_naming_those_that_can(env, launcher, variable):
    """Each process would come up as a one-rank MPI singleton and train alone into the same run.dir."""
    info = detect_launcher(env)
    assert info.launcher == launcher and info.size > 1
    with pytest.raises(LaunchError) as e:
        check_launch(info, env)
    assert str(e.value).startswith(f"{variable}: started by {launcher}")
    assert str(e.value).endswith("launch with mpirun -np N, horovodrun -np N (or --gloo), or srun --mpi=pmix "
                                 "inside Slurm")


def test_one_process_of_a_foreign_launcher_is_a_single_process():
    info = detect_launcher({**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert info.launcher == "single"
    check_launch(info, TORCHRUN)
    assert detect_launcher({"RANK": "3"}).launcher == "single"  # RANK alone: some other tool's variable


def test_a_supported_launcher_wins_over_leftover_foreign_variables():
    assert detect_launcher({**TORCHRUN, **OPENMPI}).launcher == "openmpi"
    assert detect_launcher({**TORCHRUN, **SLURM_STEP}).launcher == "slurm"
    assert detect_launcher({**TORCHRUN, "HPCTRAIN_LAUNCHER": "single"}).launcher == "single"


def test_forced_launcher_wins():
    assert detect_launcher({**OPENMPI, **SLURM_STEP, "HPCTRAIN_LAUNCHER": "slurm"}).launcher == "slurm"
    assert detect_launcher({**OPENMPI, "HPCTRAIN_LAUNCHER": "single"}).launcher == "single"


def test_controller_follows_the_launcher_and_the_horovod_build():
    """Tested as the function it is: every Horovod this project has built has MPI (here, and on the one-GPU
    machine, which had Open MPI), so a single process on the Gloo controller has not run end to end."""
    assert choose_controller("horovodrun-gloo", True) == "gloo"
    assert choose_controller("openmpi", True) == "mpi"
    assert choose_controller("single", True) == "mpi"
    assert choose_controller("single", False) == "gloo"  # one process, no MPI installed
    with pytest.raises(LaunchError, match="built without MPI.*HOROVOD_WITH_MPI=1"):
        choose_controller("slurm", False)


def test_gloo_operations_under_mpirun_are_refused():
    env = {**OPENMPI, "HOROVOD_CPU_OPERATIONS": "gloo"}
    with pytest.raises(LaunchError, match="HOROVOD_CPU_OPERATIONS=gloo under openmpi segfaults"):
        check_launch(detect_launcher(env), env)
    check_launch(detect_launcher(HOROVOD_GLOO), HOROVOD_GLOO)  # fine under horovodrun --gloo


def test_elastic_config_and_launch_must_match():
    elastic_env = {**HOROVOD_GLOO, "HOROVOD_ELASTIC": "1"}
    check_launch(detect_launcher(elastic_env), elastic_env, elastic=True)
    check_launch(detect_launcher(elastic_env), elastic_env)  # not a training run (e.g. hpctrain info)
    with pytest.raises(LaunchError, match="needs an elastic launch"):
        check_launch(detect_launcher(HOROVOD_GLOO), HOROVOD_GLOO, elastic=True)
    with pytest.raises(LaunchError, match="fault.elastic is false"):
        check_launch(detect_launcher(elastic_env), elastic_env, elastic=False)


def test_elastic_runs_keep_horovods_cycle_time():
    """Horovod 0.28 segfaults re-initialising after an elastic reset when the cycle time is pinned too."""
    from hpctrain.config import CommConfig, FaultConfig
    from hpctrain.runtime import _horovod_env

    env: dict[str, str] = {}
    _horovod_env(CommConfig(), env, FaultConfig(watchdog_s=0, elastic=True), size=2)
    assert "HOROVOD_CYCLE_TIME" not in env and "HOROVOD_FUSION_THRESHOLD" in env
    _horovod_env(CommConfig(cycle_time_ms=3.0), env, None, size=2)
    assert env["HOROVOD_CYCLE_TIME"] == "3.0"


def test_elastic_survivors_learn_of_a_lost_worker_before_the_peer_timeout():
    """Gloo's wait for a lost worker's data ends in a reset the survivors come through; fault.peer_timeout_s
    ending them first would turn the loss of one node into the loss of the job."""
    from hpctrain.config import CommConfig, FaultConfig
    from hpctrain.runtime import _horovod_env

    env: dict[str, str] = {}
    _horovod_env(CommConfig(), env, FaultConfig(peer_timeout_s=20, elastic=True), size=2)
    assert float(env["HOROVOD_GLOO_TIMEOUT_SECONDS"]) < 20
    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "7"}
    _horovod_env(CommConfig(), env, FaultConfig(elastic=True), size=2)
    assert env["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "7"  # the user's own setting is kept
    env = {}
    _horovod_env(CommConfig(), env, FaultConfig(peer_timeout_s=20), size=2)
    assert "HOROVOD_GLOO_TIMEOUT_SECONDS" not in env  # not elastic: a lost peer ends the job anyway


def test_a_single_rank_runs_horovods_thread_at_a_long_cycle():
    """One rank has nothing to all-reduce: the background thread's wake-ups only interrupt the compute."""
    from hpctrain.config import CommConfig
    from hpctrain.runtime import SINGLE_RANK_CYCLE_MS, _horovod_env

    env: dict[str, str] = {}
    _horovod_env(CommConfig(), env, None, size=1)
    assert float(env["HOROVOD_CYCLE_TIME"]) == SINGLE_RANK_CYCLE_MS > CommConfig().cycle_time_ms
    _horovod_env(CommConfig(cycle_time_ms=50.0), env, None, size=1)
    assert env["HOROVOD_CYCLE_TIME"] == "50.0"  # a longer one asked for is kept
    _horovod_env(CommConfig(), env, None, size=2)
    assert float(env["HOROVOD_CYCLE_TIME"]) == CommConfig().cycle_time_ms


def test_cpu_threads_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert cpu_threads(2) == 4 and cpu_threads(16) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})  # bound to one core by the launcher
    assert cpu_threads(2) == 1


def test_rank_seeds_differ_and_repeat():
    seeds = {rank_seed(1234, r) for r in range(64)}
    assert len(seeds) == 64 and rank_seed(1234, 5) == rank_seed(1234, 5)


def test_keep_freed_memory_stops_each_allocation_faulting_afresh():
    """A loop that allocates and frees the same tensors (1-8 MiB, 18 MiB in all) as a training step does:
    with glibc's defaults the heap is trimmed and every page faults in again each iteration; kept, it is
    reused. Run in a fresh interpreter because mallopt settings last for the life of a process."""
    import subprocess
    import sys

    script = """
import resource, numpy as np
from hpctrain.runtime import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        held = [np.ones(n << 18, dtype=np.float32) for n in (1, 4, 2, 8, 3)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
assert keep_freed_memory(64)
faults()  # the first round after the change still faults its pages in once
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    default, kept = map(int, out.split())
    assert default >= 10 * 4608  # 4,608 pages an iteration, faulted in again in many of the 50
    assert kept < 100, (default, kept)


def test_launcher_detection_imports_no_torch_horovod_or_mpi():
    """`hpctrain.launchers` must be usable before (and without) the heavy imports: a launch can then be
    checked, and refused, in milliseconds. A control import shows the probe sees such imports."""
    import subprocess
    import sys

    probe = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'horovod', 'mpi4py'}))")
    loaded = subprocess.run([sys.executable, "-c", probe, "hpctrain.launchers"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
    control = subprocess.run([sys.executable, "-c", probe, "hpctrain.train"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert "torch" in control


def test_hierarchical_allreduce_is_said_to_be_ignored_where_horovod_ignores_it():
    from hpctrain.config import CommConfig
    from hpctrain.runtime import _horovod_env, hierarchical_ignored

    assert "without NCCL" in hierarchical_ignored(nccl_built=False, on_gpu=True, size=8, local_size=4)
    assert "on the CPU" in hierarchical_ignored(nccl_built=True, on_gpu=False, size=8, local_size=4)
    assert "one node" in hierarchical_ignored(nccl_built=True, on_gpu=True, size=4, local_size=4)
    assert hierarchical_ignored(nccl_built=True, on_gpu=True, size=8, local_size=4) is None
    env: dict[str, str] = {}
    _horovod_env(CommConfig(hierarchical=True), env, None, size=2)
    assert env["HOROVOD_HIERARCHICAL_ALLREDUCE"] == "1"
    env = {}
    _horovod_env(CommConfig(), env, None, size=2)
    assert "HOROVOD_HIERARCHICAL_ALLREDUCE" not in env
