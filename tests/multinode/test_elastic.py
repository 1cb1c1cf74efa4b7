"""Horovod elastic across the two nodes of conftest.py, hosts found by slurm/discover_hosts.sh from Slurm's
node states: n2 is powered off mid-run (its link down, its processes gone: no connection reset reaches the
survivors), the two workers on n1 carry on alone, then n2 is revived and its workers rejoin. horovodrun
reaches the nodes through the ssh stand-in, which waits for a vanished host as a real ssh does, here with
the ServerAlive settings docs/fault-tolerance.md asks of users."""

from __future__ import annotations

import json
import re
import subprocess
import time

from tests.launch import HPCTRAIN, QUIET, REPO, wait_for

STEPS = 2000  # the rejoin came by step 910 here (2 cores): room for a machine about twice as fast
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=10",
       f"train.steps={STEPS}", "fault.elastic=true", "fault.commit_every=10", *QUIET]


def worlds(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"elastic: world is now (\d+) rank", log)]


def test_elastic_survivors_go_on_without_a_lost_node_and_it_rejoins(both_nodes_up, tmp_path):
    cluster = both_nodes_up
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n    ServerAliveInterval 5\n    ServerAliveCountMax 3\n")
    env = {**cluster.env, "HOME": str(home), "HPCTRAIN_ELASTIC_NODES": "n[1-2]", "HPCTRAIN_SLOTS_PER_NODE": "2"}

    def discovered() -> list[str]:
        found = subprocess.run([str(REPO / "slurm/discover_hosts.sh")], env=env, capture_output=True, text=True,
                               timeout=30)
        assert found.returncode == 0, found.stderr
        return found.stdout.split()

    assert discovered() == ["n1:2", "n2:2"]
    run_dir, log = tmp_path / "run", tmp_path / "horovodrun.log"
    cmd = ["horovodrun", "-np", "4", "--min-np", "2", "--max-np", "4", "--blacklist-cooldown-range", "5", "10",
           "--host-discovery-script", str(REPO / "slurm/discover_hosts.sh"), HPCTRAIN, "train", *RUN,
           f"run.dir={run_dir}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: re.search(r"step 100/", log.read_text()), timeout=180, what="step 100 on 4 ranks")
        cluster.ctl("poweroff", "n2")
        lost = time.monotonic()
        # Measured: 30 s (one Gloo timeout) when n2 held ranks 2 and 3; 63 and 93 s when it held rank 0 (steps
        # of about 30 s: more Gloo timeouts in the reset, a guess not traced). Without the ServerAlive settings
        # the survivors were still waiting at 120 s, and the ssh stand-in waits 924 s as TCP does.
        wait_for(lambda: 2 in worlds(log.read_text()), timeout=180, what="the survivors to go on as 2 ranks")
        went_on = time.monotonic() - lost
        print(f"horovodrun elastic: node loss to training again on 2 ranks {went_on:.1f} s")
        wait_for(lambda: discovered() == ["n1:2"], timeout=60, what="Slurm to stop listing n2")
        cluster.ctl("revive", "n2")
        back = time.monotonic()
        wait_for(lambda: worlds(log.read_text())[-1:] == [4], timeout=180, what="n2's workers to rejoin")
        print(f"horovodrun elastic: revived node to training again on 4 ranks {time.monotonic() - back:.1f} s")
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = summary["elastic_world_sizes"]
    assert sizes[0] == 4 and 2 in sizes and sizes[-1] == 4, sizes
    assert summary["steps"] == STEPS and summary["world_size"] == 4
    assert "watchdog" not in text, text[-5000:]  # no rank was ended for waiting through the reset
