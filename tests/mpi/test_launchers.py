"""Real 2-rank launches of `hpctrain train` and `hpctrain info` under each launcher we support."""

import pytest

from tests.launch import BIN, HPCTRAIN, horovodrun, mpirun, run, summary

SMALL = ["model.name=mlp", "model.width=32", "train.steps=20", "train.batch_size=16", "data.samples=1024",
         "run.log_every=5", "train.warmup_steps=2"]


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
    assert (tmp_path / "model.pt").exists() and (tmp_path / "config.toml").exists()


def test_single_process_and_two_ranks_write_the_same_summary_keys(tmp_path):
    run([HPCTRAIN, "train", *SMALL, f"run.dir={tmp_path}"])
    s = summary(tmp_path)
    for key in ("final_loss", "steps", "world_size", "samples_per_sec", "params_sha256"):
        assert key in s
    assert s["world_size"] == 1 and s["launcher"] == "single" and len(s["params_sha256"]) == 64


def test_info_reports_every_rank():
    out = run(mpirun(2, HPCTRAIN, "info")).stdout
    assert "horovod     0.28.1 built with: mpi=yes, gloo=yes" in out
    assert "launcher    openmpi; controller mpi; world size 2" in out
    assert "rank 0/2" in out and "rank 1/2" in out
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
