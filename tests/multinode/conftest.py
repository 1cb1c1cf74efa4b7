"""A real two-node cluster for these tests: slurm/local/cluster.sh makes each node its own set of Linux
namespaces (hostname, network, mount, PID) with a real slurmd, and slurmctld on a head namespace; started once
per test run and always stopped (by PID) at the end, also when a test fails. A test that powers a node off
revives it before it returns, so the next test finds both nodes up."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch import BIN, REPO
from tests.launch import env as clean_env

STATE_DIR = Path("/tmp/hpctrain-multinode-tests")
SCRIPT = REPO / "slurm/local/cluster.sh"
NODES = ("n1", "n2")


@dataclass
class Cluster:
    dir: Path
    env: dict[str, str]  # for processes that use the cluster: wrappers first on PATH, SLURM_CONF

    def ctl(self, *args: str) -> str:
        proc = subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"cluster.sh {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def sh(self, *cmd: str, timeout: float = 180, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=REPO, env={**self.env, **extra}, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-6000:]}")
        return proc

    def local(self, node: str, which: str = "scratch") -> Path:
        """The node-local directory ``which`` (tmp, scratch) of ``node`` as seen from outside the node."""
        return self.dir / "nodes" / node / which

    @property
    def node_path(self) -> Path:
        """Where every node sees its own scratch disk (the same path on each, other contents)."""
        return self.dir / "node" / "scratch"

    def state(self) -> str:
        """The nodes' and jobs' states, for a failing test's message."""
        nodes = self.sh("sinfo", "-N", "-o", "%N %T %E", check=False).stdout
        jobs = self.sh("squeue", "-o", "%i %T %R", check=False).stdout
        return f"nodes:\n{nodes}jobs:\n{jobs}"

    def job(self, job_id: str) -> dict[str, str]:
        out = self.sh("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, states: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                 timeout: float = 240) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (info := self.job(job_id)).get("JobState") not in states:
            assert time.monotonic() < deadline, f"job {job_id} not {states} after {timeout} s: {info}"
            time.sleep(0.5)
        return info


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("slurm/local/cluster.sh needs root (namespaces; slurmd starts jobs as their users)")
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("util-linux (unshare, nsenter) is missing")
    env = {**clean_env(), "HPCTRAIN_CLUSTER_DIR": str(STATE_DIR)}
    env["PATH"] = f"{STATE_DIR}/bin:{BIN}:{env['PATH']}"
    env["SLURM_CONF"] = f"{STATE_DIR}/slurm.conf"
    c = Cluster(STATE_DIR, env)
    try:
        c.ctl("up", "--nodes", str(len(NODES)))
        yield c
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def both_nodes_up(cluster: Cluster) -> Iterator[Cluster]:
    """For tests that power a node off: whatever happens, every node is up again afterwards."""
    try:
        yield cluster
    finally:
        for n in NODES:
            if "off" in cluster.ctl("status").split(f"{n}: ")[1].split("\n")[0]:
                cluster.ctl("revive", n)
        cluster.sh("scancel", "--full", "--quiet", "--user=root", check=False)
