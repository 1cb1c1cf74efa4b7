"""A real single-node Slurm cluster (slurmctld, slurmd, munged) for these tests: started once per test run
by slurm/local/up.sh, stopped by slurm/local/down.sh if this run started it."""

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.launch import REPO

STATE_DIR = "/tmp/hpctrain-slurm-tests"


@pytest.fixture(scope="session")
def cluster():
    """Environment (SLURM_CONF...) for talking to the cluster."""
    if shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed: HPCTRAIN_WITH_SLURM=1 bash scripts/setup.sh (make test does it)")
    if os.geteuid() != 0:
        pytest.skip("slurm/local/up.sh needs root (slurmd starts jobs as their users)")
    env = {**os.environ, "HPCTRAIN_SLURM_DIR": STATE_DIR, "SLURM_CONF": f"{STATE_DIR}/slurm.conf"}
    up = subprocess.run([str(REPO / "slurm/local/up.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    started = "already up" not in up.stdout
    yield env
    if started:
        subprocess.run([str(REPO / "slurm/local/down.sh")], env=env, capture_output=True, timeout=120)


def job_info(env: dict, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (there is no accounting database here, so no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(env: dict, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(env, job_id)
        if info.get("JobState") in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not {states} after {timeout} s: {info}")
        time.sleep(1)
