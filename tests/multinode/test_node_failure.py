"""A node that dies mid-run, on the two-node cluster of conftest.py: power-off is the link going down and every
process of the node vanishing at once (cluster.sh poweroff), so the survivors get no connection reset, as
on a real cluster. Each launcher must end the job within a bound, and under slurm/train.sbatch the job is
requeued and resumes bit-identically. The figures these tests print are in docs/fault-tolerance.md."""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.launch import HPCTRAIN, QUIET, REPO, logged_step, summary, wait_for

STEPS = 500
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=10",
       f"train.steps={STEPS}", "checkpoint.every_steps=100", *QUIET]
# Open MPI's daemon links (mpirun <-> orted) notice a vanished host only by TCP keepalive, 300 s + 9 x 20 s by
# default; these make it about 25 s (docs/fault-tolerance.md)
KEEPALIVE = {"OMPI_MCA_oob_tcp_keepalive_time": "10", "OMPI_MCA_oob_tcp_keepalive_intvl": "5",
             "OMPI_MCA_oob_tcp_keepalive_probes": "3"}


def power_off_at(cluster, run_dir, step: int, node: str = "n2") -> float:
    try:
        wait_for(lambda: logged_step(run_dir) >= step, timeout=180, what=f"step {step}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{cluster.state()}") from None
    cluster.ctl("poweroff", node)
    return time.monotonic()


def test_sbatch_requeues_after_a_node_failure_and_resumes_bit_identical(both_nodes_up, tmp_path):
    cluster = both_nodes_up
    cluster.sh("srun", "-N2", "--ntasks-per-node=2", "--mpi=pmix", HPCTRAIN, "train", *RUN,
               f"run.dir={tmp_path / 'whole'}", timeout=300)
    run_dir = tmp_path / "run"
    job = cluster.sh("sbatch", "--parsable", "-N2", "--ntasks-per-node=2", f"--output={tmp_path}/%j.out",
                     "slurm/train.sbatch", *RUN, f"run.dir={run_dir}",
                     HPCTRAIN_LOG_DIR=str(tmp_path / "logs")).stdout.strip()
    lost = power_off_at(cluster, run_dir, 250)
    wait_for(lambda: cluster.job(job).get("Restarts") == "1", timeout=90, what="the requeue")
    took = time.monotonic() - lost
    print(f"srun under sbatch: node loss to requeue {took:.1f} s")
    assert took < 60
    cluster.ctl("revive", "n2")
    back = time.monotonic()
    wait_for(lambda: (tmp_path / "logs" / job / "restart-1.log").exists(), timeout=120, what="restart 1")
    print(f"srun under sbatch: revived node to restart 1 started {time.monotonic() - back:.1f} s")
    info = cluster.wait_job(job, timeout=300)
    out = (tmp_path / f"{job}.out").read_text()
    restart_log = (tmp_path / "logs" / job / "restart-1.log").read_text()[-3000:]
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), f"{out}\nrestart-1.log:\n{restart_log}"
    assert "node failure (n2 down): Slurm ends this start and requeues the job" in out
    assert "got SIGTERM (scancel" not in out
    resumed = summary(run_dir)
    assert resumed["resumed_from"].endswith("step-00000200"), out
    assert resumed["params_sha256"] == summary(tmp_path / "whole")["params_sha256"]
    assert json.loads((tmp_path / "logs" / job / "restart-1.exit.json").read_text())["exit_code"] == 0


def test_mpirun_inside_sbatch_ends_when_a_node_is_lost(both_nodes_up, tmp_path):
    """mpirun started by a batch script starts its daemons through srun: Slurm's node-failure handling
    (SlurmdTimeout) ends it."""
    cluster = both_nodes_up
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nmpirun -np 4 --map-by ppr:2:node {HPCTRAIN} train {' '.join(RUN)} "
                      f"train.steps=100000 run.dir={tmp_path / 'run'}\n")
    job = cluster.sh("sbatch", "--parsable", "-N2", "--ntasks-per-node=2", "--no-requeue",
                     f"--output={tmp_path}/%j.out", str(script)).stdout.strip()
    lost = power_off_at(cluster, tmp_path / "run", 100)
    info = cluster.wait_job(job, ("NODE_FAIL", "FAILED", "COMPLETED", "CANCELLED"), timeout=120)
    took = time.monotonic() - lost
    print(f"mpirun under sbatch: node loss to job end {took:.1f} s ({info['JobState']})")
    assert info["JobState"] == "NODE_FAIL" and took < 60


def test_horovodrun_ends_when_a_node_is_lost(both_nodes_up, tmp_path):
    """horovodrun across the node hostnames (ssh stand-in, no Slurm): the surviving ranks give up after
    fault.peer_timeout_s and mpirun, with the keepalive settings docs/fault-tolerance.md recommends, drops
    the lost node's daemon; without them it would wait for it for minutes."""
    cluster = both_nodes_up
    run_dir, log = tmp_path / "run", tmp_path / "horovodrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["horovodrun", "-np", "4", "-H", "n1:2,n2:2", HPCTRAIN, "train", *RUN,
                                 "train.steps=100000", f"run.dir={run_dir}"], cwd=REPO,
                                env={**cluster.env, **KEEPALIVE}, stdout=out, stderr=subprocess.STDOUT)
    try:
        lost = power_off_at(cluster, run_dir, 100)
        while proc.poll() is None and time.monotonic() - lost < 90:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    took = time.monotonic() - lost
    print(f"horovodrun: node loss to launcher exit {took:.1f} s")
    assert proc.returncode != 0 and took < 60, log.read_text()[-3000:]


def test_a_restart_beyond_the_cap_does_not_start(tmp_path):
    """Slurm requeues a job after a node failure by itself, without counting against HPCTRAIN_MAX_RESTARTS:
    the batch script keeps the cap when the next start begins. The script is run as Slurm would start
    restart 2 (two real node-failure cycles would cost minutes of CI), with a stand-in `srun` on PATH that
    only records that the script went as far as launching the ranks."""
    called = tmp_path / "srun-called"
    (tmp_path / "srun").write_text(f"#!/bin/sh\ntouch {called}\n")
    (tmp_path / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "HPCTRAIN_LOG_DIR": str(tmp_path / "logs")}
    script = str(REPO / "slurm" / "train.sbatch")
    over = subprocess.run(["bash", script], env={**env, "SLURM_RESTART_COUNT": "2", "HPCTRAIN_MAX_RESTARTS": "1"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert over.returncode == 1 and not called.exists(), over.stdout + over.stderr
    assert "already restarted 2 times (HPCTRAIN_MAX_RESTARTS=1): not starting again" in over.stdout
    within = subprocess.run(["bash", script], env={**env, "SLURM_RESTART_COUNT": "1", "HPCTRAIN_MAX_RESTARTS": "1"},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert called.exists(), within.stdout + within.stderr  # the control: restart 1 of at most 1 starts
