"""Horovod elastic on real workers: `localhost` and `127.0.0.1` are two host names for this machine, listed
by a discovery script whose output the test edits while the job runs."""

import json
import os
import signal
import subprocess

import psutil

from tests.launch import BIN, HPCTRAIN, QUIET, REPO, env, run, wait_for

STEPS = 3000
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=100",
       f"train.steps={STEPS}", "fault.elastic=true", "fault.commit_every=10", *QUIET]


def workers(proc: subprocess.Popen) -> dict[str, int]:
    """{HOROVOD_HOSTNAME: pid} of the hpctrain workers under ``proc``."""
    found = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "hpctrain" in " ".join(child.cmdline()) and "HOROVOD_HOSTNAME" in child.environ():
                found[child.environ()["HOROVOD_HOSTNAME"]] = child.pid
        except psutil.Error:
            continue
    return found


def test_elastic_run_grows_then_survives_losing_its_rank_0(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:1\n")
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {hosts}\n")
    discover.chmod(0o755)
    log = tmp_path / "job.log"
    run_dir = tmp_path / "run"
    # --network-interface: without it Horovod waits for two hosts before starting, to compare their interfaces
    cmd = [str(BIN / "horovodrun"), "-np", "1", "--min-np", "1", "--max-np", "2", "--network-interface", "lo",
           "--host-discovery-script", str(discover), HPCTRAIN, "train", *RUN, f"run.dir={run_dir}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "step 200/" in log.read_text(), 90, "step 200 on one worker")
            hosts.write_text("localhost:1\n127.0.0.1:1\n")  # a second worker becomes available
            wait_for(lambda: "world is now 2 rank(s)" in log.read_text(), 90, "the second worker to join")
            wait_for(lambda: len(workers(proc)) == 2, 30, "two workers")
            os.kill(workers(proc)["localhost"], signal.SIGKILL)  # the original worker, rank 0
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    assert "world is now 1 rank(s)" in text, text[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["elastic_world_sizes"] == [2, 1]  # the survivor joined at 2 and lost its peer
    assert summary["steps"] == STEPS and summary["world_size"] == 1 and summary["samples_per_sec"] > 0
    assert summary["initial_loss"] > 2.0  # the first step's loss, carried over from the worker that died
    assert summary["final_loss"] < 0.5 * summary["initial_loss"]


def test_elastic_flag_and_launch_must_match(tmp_path):
    """fault.elastic without an elastic launch (and the reverse) is a one-line error, exit 2."""
    proc = run([HPCTRAIN, "train", "fault.elastic=true", f"run.dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "needs an elastic launch" in proc.stderr
    proc = run([HPCTRAIN, "train", f"run.dir={tmp_path}"], check=False, HOROVOD_ELASTIC="1")
    assert proc.returncode == 2 and "fault.elastic is false" in proc.stderr
