"""slurm/train.sbatch and `hpctrain slurm submit` against real slurmctld/slurmd: a job to completion, the
pre-emption cycle (signal → checkpoint → exit 75 → requeue → resume), scancel + resubmit, hostile values."""

import json
import os
import subprocess

import pytest

from tests.launch import HPCTRAIN, QUIET, REPO, file_bytes, logged_step
from tests.launch import env as clean_env
from tests.slurm.conftest import job_info, wait_job

STEPS = 3000
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=50",
       f"train.steps={STEPS}", "checkpoint.every_steps=1000", *QUIET]


def sh(cmd: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def submit(env: dict, run_dir, *extra: str) -> str:
    return sh([HPCTRAIN, "slurm", "submit", "--ntasks", "2", "--time", "10", *RUN, f"run.dir={run_dir}", *extra],
              env).stdout.strip()


def wait_step(run_dir, step: int, job_env: dict, job_id: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while logged_step(run_dir) < step:
        assert time.monotonic() < deadline, f"job {job_id} did not reach step {step}: {job_info(job_env, job_id)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def job_env(cluster):
    return {**clean_env(), "SLURM_CONF": cluster["SLURM_CONF"]}


@pytest.fixture(scope="module")
def reference(job_env, tmp_path_factory):
    """`sbatch slurm/train.sbatch` as a user would type it: 2 tasks, to completion; its params_sha256."""
    d = tmp_path_factory.mktemp("reference")
    job_id = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={d}/%x-%j.out", "slurm/train.sbatch", *RUN,
                 f"run.dir={d}/run", f"checkpoint.dir={d}/ckpt"], {**job_env, "HPCTRAIN_LOG_DIR": str(d / "logs")}
                ).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    out = (d / f"hpctrain-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out + (d / f"logs/{job_id}/restart-0.log"
                                                                                  ).read_text()[-3000:]
    return d, job_id, json.loads((d / "run" / "summary.json").read_text())


def test_sbatch_runs_training_to_completion(reference):
    d, job_id, summary = reference
    assert summary["world_size"] == 2 and summary["steps"] == STEPS and summary["launcher"] == "slurm"
    assert summary["final_loss"] < summary["initial_loss"]
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["step-00001000", "step-00002000", "step-00003000"]
    assert "finished" in (d / f"hpctrain-{job_id}.out").read_text()
    assert "params_sha256" in (d / "logs" / job_id / "restart-0.log").read_text()


def test_preemption_signal_checkpoints_requeues_and_resumes_bit_identical(job_env, reference, tmp_path):
    """The signal is sent with `scancel --batch --signal=USR1`: exactly what slurmctld does at --signal's
    warning time (to the batch shell), at a moment the test chooses; slurmctld itself only checks warning
    times every 30-60 s, too coarse to aim at the middle of a short CI job."""
    run_dir = tmp_path / "run"
    job_id = submit(job_env, run_dir)
    assert "--signal=B:USR1@120" in next((run_dir / "slurm").glob("*.sbatch")).read_text()
    wait_step(run_dir, 300, job_env, job_id)
    sh(["scancel", "--batch", "--signal=USR1", job_id], job_env)
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    out = (run_dir / "logs" / f"hpctrain-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", out
    assert "checkpointed on request: requeueing (restart 1)" in out
    ended = json.loads((run_dir / "logs" / job_id / "restart-0.exit.json").read_text())  # what decided it
    assert (ended["exit_code"], ended["outcome"], ended["slurm_job_id"]) == (75, "preempted", job_id)
    assert f"checkpointed at step {ended['step']} ({ended['checkpoint']})" in out
    assert json.loads((run_dir / "logs" / job_id / "restart-1.exit.json").read_text())["exit_code"] == 0
    assert (run_dir / "logs" / job_id / "restart-1.log").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == STEPS
    assert summary["params_sha256"] == reference[2]["params_sha256"]


def test_scancel_then_resubmit_resumes_from_the_checkpoint(job_env, reference, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(job_env, run_dir)
    wait_step(run_dir, 1200, job_env, job_id)
    sh(["scancel", job_id], job_env)  # SIGTERM to the ranks: they checkpoint and exit 75; no requeue
    info = wait_job(job_env, job_id, ("CANCELLED", "COMPLETED", "FAILED"))
    assert info["JobState"] == "CANCELLED"
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved and saved[-1] >= "step-00001000"
    assert not (run_dir / "summary.json").exists()
    second = submit(job_env, run_dir)
    info = wait_job(job_env, second, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    assert info["JobState"] == "COMPLETED", (run_dir / "logs" / f"hpctrain-{second}.out").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith(saved[-1]) and summary["steps"] == STEPS
    assert summary["params_sha256"] == reference[2]["params_sha256"]


def test_hostile_values_are_quoted_and_never_executed(job_env, tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / f"a b'c\"d$(touch {marker})`touch {marker}`"
    job_id = sh([HPCTRAIN, "slurm", "submit", "--ntasks", "2", "--output", f"{tmp_path}/%j.out", "train.steps=20",
                 f"run.dir={hostile}"], job_env).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    assert info["JobState"] == "COMPLETED", (tmp_path / f"{job_id}.out").read_text()
    assert (hostile / "summary.json").exists()  # the literal directory name reached hpctrain
    assert not marker.exists()


def test_scaling_sbatch_runs_each_rank_count_in_one_allocation(job_env, tmp_path):
    """slurm/scaling.sbatch is `hpctrain scaling run --launcher srun`: one step per rank count, same records."""
    out = tmp_path / "strong"
    job_id = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={tmp_path}/%j.out", "slurm/scaling.sbatch",
                 "strong", str(out), "train.steps=100", "run.log_every=50"],
                {**job_env, "HPCTRAIN_RANKS": "1 2", "HPCTRAIN_GLOBAL_BATCH": "64"}).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    table = (tmp_path / f"{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", table
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["world_size"], r["global_batch_size"]) for r in records] == [(1, 64), (2, 64)], table
    assert all(r["command"].startswith("srun --mpi=pmix --ntasks=") for r in records)
    assert [ln.split()[1] for ln in table.splitlines() if "samples/s" in ln] == ["1", "2"]


def test_scaling_srun_launcher_refused_outside_an_allocation_or_beyond_it(tmp_path):
    """--launcher srun needs a Slurm allocation, and no more ranks than it has: one line, exit 2, no run."""
    records = tmp_path / "r.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    p = subprocess.run([HPCTRAIN, "scaling", "run", "--launcher", "srun", "--mode", "weak", "--ranks", "1",
                        "--out", str(records)], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "inside sbatch or salloc" in p.stderr, p.stderr
    p = subprocess.run([HPCTRAIN, "scaling", "run", "--launcher", "srun", "--mode", "weak", "--ranks", "1,4",
                        "--out", str(records)], env={**env, "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"},
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--ranks 4: the allocation has 2 tasks" in p.stderr, p.stderr
    assert not records.exists()


def test_scaling_run_through_slurm(job_env, tmp_path):
    """`hpctrain scaling run --slurm`: each point is an `sbatch --wait slurm/train.sbatch` job."""
    records = tmp_path / "weak.jsonl"
    sh([HPCTRAIN, "scaling", "run", "--slurm", "--mode", "weak", "--ranks", "1,2", "--out", str(records),
        "train.steps=30", "run.log_every=10"], job_env)
    recs = [json.loads(ln) for ln in records.read_text().splitlines()]
    assert [(r["world_size"], r["launcher"]) for r in recs] == [(1, "slurm"), (2, "slurm")]


def test_a_75_that_hpctrain_did_not_record_is_a_failure_not_a_requeue(job_env, tmp_path):
    """srun returns its tasks' exit code, but 75 (EX_TEMPFAIL) is not hpctrain's alone: a wrapper in
    HPCTRAIN_BIN (a container runtime, a site script) may return it too. Only hpctrain's own record of a
    checkpoint requeues; before, this job was requeued until HPCTRAIN_MAX_RESTARTS."""
    wrapper = tmp_path / "site-wrapper"
    wrapper.write_text("#!/bin/sh\necho 'site wrapper: temporary failure' >&2\nexit 75\n")
    wrapper.chmod(0o755)
    job_id = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={tmp_path}/%j.out", "slurm/train.sbatch",
                 "train.steps=20", f"run.dir={tmp_path}/run"],
                {**job_env, "HPCTRAIN_BIN": str(wrapper), "HPCTRAIN_MAX_RESTARTS": "1",
                 "HPCTRAIN_LOG_DIR": str(tmp_path / "logs")}).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    out = (tmp_path / f"{job_id}.out").read_text()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("FAILED", "0", "1:0"), out
    assert "srun returned 75 but hpctrain recorded no end" in out and "requeueing" not in out


def test_resubmitting_a_finished_job_leaves_its_results_alone(job_env, reference):
    """A Slurm job resubmitted after it completed (issue: it used to overwrite summary.json with empty figures
    and fail): it says the run is complete and every file of the run and its checkpoints stays byte for byte;
    only this job's exit record (exit.json, which names the job) is new."""
    d, _, _ = reference
    before = file_bytes(d / "run", d / "ckpt", skip=("exit.json",))
    job_id = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={d}/%x-%j.out", "slurm/train.sbatch", *RUN,
                 f"run.dir={d}/run", f"checkpoint.dir={d}/ckpt"], {**job_env, "HPCTRAIN_LOG_DIR": str(d / "logs")}
                ).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = (d / "logs" / job_id / "restart-0.log").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert f"already complete at step {STEPS}" in log
    assert file_bytes(d / "run", d / "ckpt", skip=("exit.json",)) == before
    record = json.loads((d / "run" / "exit.json").read_text())
    assert record["exit_code"] == 0 and record["slurm_job_id"] == job_id


def test_own_script_through_train_sbatch(job_env, tmp_path):
    """HPCTRAIN_SCRIPT: a user's script calling hpctrain.fit under srun --mpi=pmix, with the same cycle."""
    env = {**job_env, "HPCTRAIN_LOG_DIR": str(tmp_path / "logs"), "HPCTRAIN_SCRIPT": "docs/examples/train_mine.py",
           "PYTHONPATH": str(REPO / "docs" / "examples")}
    job_id = sh(["sbatch", "--parsable", "--ntasks=2", f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch",
                 "train.steps=20", "run.log_every=10", f"run.dir={tmp_path}/run"], env).stdout.strip()
    info = wait_job(job_env, job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = (tmp_path / "logs" / job_id / "restart-0.log").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["world_size"] == 2 and summary["launcher"] == "slurm"
    assert summary["model"] == "mymodels:ConvNet"
    assert json.loads((tmp_path / "run" / "exit.json").read_text())["exit_code"] == 0
