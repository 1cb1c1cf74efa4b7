"""`hpctrain scaling run`'s points over nodes, their launch commands and what a record says of placement; the
runs themselves are in tests/slurm and tests/multinode."""

import pytest

from hpctrain.scaling import run
from hpctrain.scaling.run import Study, StudyError


def test_each_node_count_runs_the_rank_counts_that_spread_evenly_over_it():
    study = Study("weak", [1, 2, 3, 4], nodes=[1, 2], launcher="sbatch")
    assert run.points(study) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 4)]
    assert run.points(Study("weak", [1, 2])) == [(1, 1), (1, 2)]  # the default: one node
    with pytest.raises(StudyError, match="--nodes 4: none of --ranks 1,2,6 spreads evenly over 4 nodes"):
        run.points(Study("weak", [1, 2, 6], nodes=[1, 4]))
    with pytest.raises(StudyError, match="--nodes: expected positive node counts"):
        run.points(Study("weak", [1], nodes=[0]))


def test_nodes_need_a_slurm_launcher_and_an_allocation_that_has_them(monkeypatch):
    with pytest.raises(StudyError, match="--nodes 2: mpirun runs every point on this machine"):
        run.check_launcher(Study("weak", [2], nodes=[1, 2]), {})
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")  # srun on PATH, as in a job
    allocation = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "1"}
    with pytest.raises(StudyError, match="--nodes 2: the allocation has 1 node"):
        run.check_launcher(Study("weak", [2], nodes=[2], launcher="srun"), allocation)
    run.check_launcher(Study("weak", [2], nodes=[2], launcher="srun"), {**allocation, "SLURM_JOB_NUM_NODES": "2"})


def test_launch_commands_place_the_ranks_on_the_nodes(tmp_path, monkeypatch):
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")
    sbatch = run.launch(4, ["train.steps=5"], "sbatch", tmp_path, nodes=2)
    assert "--nodes=2" in sbatch and "--ntasks-per-node=2" in sbatch
    srun = run.launch(4, ["train.steps=5"], "srun", tmp_path, nodes=2)
    assert srun[:5] == ["srun", "--mpi=pmix", "--ntasks=4", "--nodes=2", "--ntasks-per-node=2"]
    assert "--nodes=2" not in run.launch(4, [], "srun", tmp_path)  # one node: srun places as before


def test_a_record_says_where_the_ranks_ran_not_what_was_asked():
    summary = {"world_size": 4, "samples_per_sec": 1.0, "hosts": {"n1": 3, "n2": 1}}
    rec = run.record("weak", summary, ["srun", "hpctrain", "train"])
    assert (rec["nodes"], rec["ranks_per_node"], rec["hosts"]) == (2, 3, {"n1": 3, "n2": 1})
    assert "nodes" not in run.record("weak", {"world_size": 1, "samples_per_sec": 1.0}, ["hpctrain"])
