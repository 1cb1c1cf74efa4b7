"""Real 2-rank launches of `hpctrain train` and `hpctrain info` under each launcher we support."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.launch import BIN, HPCTRAIN, QUIET, REPO, env, horovodrun, mpirun, run, summary

SMALL = ["model.name=mlp", "model.width=32", "train.steps=20", "train.batch_size=16", "data.samples=1024",
         "run.log_every=5", "train.untimed_steps=2", *QUIET]


@pytest.mark.parametrize("launcher, cmd, controller", [
    ("openmpi", lambda *a: mpirun(2, *a), "mpi"),
    ("horovodrun", lambda *a: horovodrun(2, *a), "mpi"),  # horovodrun drives mpirun when MPI is present
    ("horovodrun-gloo", lambda *a: horovodrun(2, *a, gloo=True), "gloo"),
], ids=["mpirun", "horovodrun", "horovodrun-gloo"])
def test_two_rank_training(tmp_path, launcher, cmd, controller):
    run(cmd(HPCTRAIN, "train", *SMALL, f"run.dir={tmp_path}"))
    s = summary(tmp_path)
    assert (s["world_size"], s["launcher"], s["controller"], s["steps"]) == (2, launcher, controller, 20)
    assert s["global_batch_size"] == 32 and s["samples_per_sec"] > 0
    assert s["final_loss"] < s["initial_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # steps 1, 5, 10, 15, 20
    first = json.loads(lines[0])  # ranks start step 1 at different times: no rank may beat the job's rate
    assert first["step"] == 1
    assert first["samples_per_sec_per_rank"]["max"] * 2 == pytest.approx(first["samples_per_sec"], rel=1e-6)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "config.toml").exists()
    ended = json.loads((tmp_path / "exit.json").read_text())
    assert (ended["exit_code"], ended["outcome"], ended["step"], ended["launcher"]) == (0, "completed", 20, launcher)


def test_single_process_and_two_ranks_write_the_same_summary_keys(tmp_path):
    """A report reading summary.json must not care how many ranks wrote it: one process and two ranks of the
    same run give the same keys, with values that say which is which."""
    one, two = tmp_path / "one", tmp_path / "two"
    run([HPCTRAIN, "train", *SMALL, f"run.dir={one}"])
    run(mpirun(2, HPCTRAIN, "train", *SMALL, f"run.dir={two}"))
    s1, s2 = summary(one), summary(two)
    assert sorted(s1) == sorted(s2)
    assert (s1["world_size"], s1["launcher"], s2["world_size"], s2["launcher"]) == (1, "single", 2, "openmpi")
    assert s2["global_batch_size"] == 2 * s1["global_batch_size"]
    assert len(s1["params_sha256"]) == len(s2["params_sha256"]) == 64


def test_info_reports_every_rank():
    import re

    import horovod

    out = run(mpirun(2, HPCTRAIN, "info")).stdout
    fields = {m[1]: m[2] for m in re.finditer(r"^(\w+)\s+(.*)$", out, re.M)}
    assert fields["horovod"].startswith(f"{horovod.__version__} built with: mpi=yes")
    assert re.search(r"launcher\s+openmpi; controller mpi; world size 2", out)
    assert re.search(r"^rank 0/2 .*host \S+", out, re.M) and re.search(r"^rank 1/2 ", out, re.M)
    assert "MPI library: Open MPI" in out and "\0" not in out  # plain text: Open MPI's version ends in a NUL


def test_torchrun_is_refused_on_every_process_before_anything_is_written(tmp_path):
    """torchrun's processes never join one Horovod job: each would train alone into the same run.dir (and exit
    0). Every process exits 2 before MPI starts and rank 0 says which launchers work. torchrun stops the other
    processes as soon as one fails, so each runs under a shell that ignores that SIGTERM and records the exit
    code; torchrun itself then returns 1."""
    codes = tmp_path / "codes"
    codes.mkdir()
    wrapper = f'trap "" TERM; "$0" "$@"; code=$?; echo $code > {codes}/rank-$RANK; exit $code'
    proc = run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--no-python", "sh", "-c", wrapper, HPCTRAIN,
                "train", *SMALL, f"run.dir={tmp_path / 'run'}"], check=False, timeout=120)
    line = ("hpctrain: error: WORLD_SIZE=2: started by torchrun, whose processes do not form one Horovod job "
            "(each would train alone, all into the same run.dir): launch with mpirun -np N, horovodrun -np N "
            "(or --gloo), or srun --mpi=pmix inside Slurm")
    assert proc.stderr.count(line) == 1, proc.stderr
    assert {p.name: p.read_text().strip() for p in codes.iterdir()} == {"rank-0": "2", "rank-1": "2"}
    assert proc.returncode == 1
    assert not (tmp_path / "run").exists()


LONG = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=50",
        "train.steps=100000", "run.progress=off", *QUIET]
LAUNCH = {"mpirun": lambda *a: mpirun(2, *a), "horovodrun": lambda *a: horovodrun(2, *a),
          "horovodrun-gloo": lambda *a: horovodrun(2, *a, gloo=True)}


def _logged_step(run_dir) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(ln).get("step", 0) for ln in lines if ln.endswith("}")), default=0)


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    """The hpctrain processes under the launcher (not its shells, mpirun or orted)."""
    return [c for c in psutil.Process(proc.pid).children(recursive=True)
            if c.name() not in ("sh", "bash", "mpirun", "orted", "horovodrun") and HPCTRAIN in c.cmdline()]


@pytest.mark.parametrize("launcher, stop, code", [
    # Ctrl-C: the terminal sends SIGINT to the launcher's process group (the ranks are not in it)
    ("mpirun", "ctrl-c", 1),  # mpirun sends SIGTERM to the ranks 1 s later and returns 1 whatever they return
    ("mpirun", "usr1-to-launcher", 75),  # forwarded to the ranks; their exit code comes through
    ("mpirun", "term-to-ranks", 75),  # as Slurm, a scheduler or `kill` would
    ("horovodrun", "ctrl-c", -signal.SIGINT),  # its /bin/sh -c mpirun dies of the SIGINT (130 in a shell)
    ("horovodrun", "usr1-to-ranks", 75),  # horovodrun returns what its mpirun returns
    ("horovodrun-gloo", "term-to-ranks", 1),  # any non-zero exit: 1 and a RuntimeError traceback
])
def test_a_stopped_run_checkpoints_and_says_so_in_exit_json_whatever_the_launcher_returns(tmp_path, launcher,
                                                                                          stop, code):
    """The ranks checkpoint and exit 75 in every case; the launcher's own exit code is measured here (Open MPI
    4.1.4, Horovod 0.28.1) and documented in docs/fault-tolerance.md; <run.dir>/exit.json is what holds."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(LAUNCH[launcher](HPCTRAIN, "train", *LONG, f"run.dir={run_dir}"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _logged_step(run_dir) < 100:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=30)[0][-3000:]
            time.sleep(0.2)
        ranks = _ranks(proc)
        assert len(ranks) == 2
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        elif stop == "usr1-to-launcher":
            proc.send_signal(signal.SIGUSR1)
        else:
            for r in ranks:
                r.send_signal(signal.SIGUSR1 if stop.startswith("usr1") else signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]  # until every holder of the pipe (an orphaned mpirun too) ends
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, out[-3000:]
    assert "stopping on request" in out
    ended = json.loads((run_dir / "exit.json").read_text())
    assert (ended["exit_code"], ended["outcome"]) == (75, "preempted"), ended
    assert ended["launcher"] == {"mpirun": "openmpi"}.get(launcher, launcher)
    assert ended["checkpoint"].endswith(f"step-{ended['step']:08d}") and os.path.isdir(ended["checkpoint"])
