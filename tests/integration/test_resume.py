"""Kill-and-resume on real ranks: signals, SIGKILL, damaged checkpoints, a hung rank, a full disk, and a
change of world size. Bit-identical means equal `params_sha256` (SHA-256 of every parameter's bytes)."""

import json
import math
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
import torch

from hpctrain import checkpoint
from tests.data_helpers import SmallDisk
from tests.launch import HPCTRAIN, QUIET, REPO, env, file_bytes, logged_step, mpirun, rank_pid, run, summary, wait_for

STEPS = 1500
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=10",
       f"train.steps={STEPS}", *QUIET]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """params_sha256 of the uninterrupted 2-rank run."""
    d = tmp_path_factory.mktemp("reference")
    run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={d}", "checkpoint.at_end=false"))
    return summary(d)["params_sha256"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(mpirun(2, HPCTRAIN, "train", *args), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_signal_checkpoints_exits_75_and_resumes_bit_identical(tmp_path, reference):
    proc = start(*RUN, f"run.dir={tmp_path}")
    wait_for(lambda: logged_step(tmp_path) >= 300, what="step 300")
    os.kill(rank_pid(proc, 1), signal.SIGUSR1)  # only one rank gets it: the ranks must agree
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    saved = checkpoint.candidates(tmp_path / "checkpoints")
    assert len(saved) == 1 and checkpoint.verify(saved[0]) is None
    stopped_at = int(saved[0].name.split("-")[1])
    assert 300 <= stopped_at < STEPS and not (tmp_path / "summary.json").exists()
    run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}"))
    s = summary(tmp_path)
    assert s["resumed_from"] == str(saved[0]) and s["steps"] == STEPS
    assert s["params_sha256"] == reference


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT])
def test_signal_on_a_single_process_checkpoints_exits_75_and_resumes(tmp_path, sig):
    """One process, no launcher: there is no all-reduce to agree through (world size 1 skips it), so this
    checks that the rank still stops on its own signal; Ctrl-C (SIGINT) too checkpoints first."""
    proc = subprocess.Popen([HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(tmp_path) >= 100, what="step 100")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    saved = checkpoint.candidates(tmp_path / "checkpoints")
    assert len(saved) == 1 and checkpoint.verify(saved[0]) is None
    assert 100 <= int(saved[0].name.split("-")[1]) < STEPS and not (tmp_path / "summary.json").exists()
    run([HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}"])
    s = summary(tmp_path)
    assert s["resumed_from"] == str(saved[0]) and s["steps"] == STEPS and s["world_size"] == 1


def test_sigkill_of_one_rank_ends_the_job_and_resume_is_bit_identical(tmp_path, reference):
    proc = start(*RUN, f"run.dir={tmp_path}", "checkpoint.every_steps=100")
    wait_for(lambda: logged_step(tmp_path) >= 450, what="step 450")
    killed = time.monotonic()
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    proc.communicate(timeout=60)
    exit_after = time.monotonic() - killed
    assert proc.returncode != 0 and exit_after < 10, exit_after
    print(f"job ended {exit_after:.2f} s after SIGKILL of rank 1")
    run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}", "checkpoint.every_steps=100"))
    s = summary(tmp_path)
    assert int(s["resumed_from"].rsplit("-", 1)[1]) >= 400
    assert s["params_sha256"] == reference


def test_resume_falls_back_past_truncated_and_tampered_checkpoints(tmp_path, reference):
    run(mpirun(2, HPCTRAIN, "train", *RUN[:-1], "train.steps=300", "checkpoint.every_steps=100",
               f"run.dir={tmp_path}"))
    ck = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.candidates(ck)] == ["step-00000300", "step-00000200", "step-00000100"]
    model = ck / "step-00000300" / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    opt = ck / "step-00000200" / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[-20] ^= 0xFF  # tampered, same size
    opt.write_bytes(bytes(data))
    proc = run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}", "checkpoint.every_steps=100"))
    assert "step-00000300: model.pt does not match its SHA-256" in proc.stderr
    assert "step-00000200: optimizer.pt does not match its SHA-256" in proc.stderr
    s = summary(tmp_path)
    assert s["resumed_from"] == str(ck / "step-00000100")
    assert s["params_sha256"] == reference  # replayed deterministically from step 100


def test_resume_from_an_explicit_bad_path_exits_2(tmp_path):
    bad = tmp_path / "step-00000001"
    bad.mkdir()
    proc = run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={tmp_path}", "--resume", str(bad)), check=False)
    assert proc.returncode == 2
    assert f"--resume {bad}: no MANIFEST.json (incomplete: the writer did not finish)" in proc.stderr


def test_hung_rank_ends_the_job_within_the_watchdog_bound(tmp_path):
    proc = start(*RUN[:-1], "train.steps=100000", f"run.dir={tmp_path}", "fault.watchdog_s=4")
    wait_for(lambda: logged_step(tmp_path) >= 100, what="step 100")
    hung = rank_pid(proc, 1)
    os.kill(hung, signal.SIGSTOP)  # a real hang: the process stops making progress, alive
    stopped = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if psutil.pid_exists(hung):
            os.kill(hung, signal.SIGKILL)
    took = time.monotonic() - stopped
    assert proc.returncode != 0
    assert 4 <= took < 4 + 6, took  # the bound: watchdog_s plus a few seconds to tear down
    assert "watchdog: no step completed for" in err and "rank 0" in err
    assert "waiting for another rank" in err
    print(f"hung rank: job ended {took:.1f} s after SIGSTOP (fault.watchdog_s=4)")


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, policy):
    disk = SmallDisk(tmp_path / "small")
    if not disk.mounted:
        pytest.skip(f"cannot mount a tmpfs here ({disk.why}); CI runs as root and can")
    try:
        # width 256: ~0.7 MB per checkpoint, so the second one does not fit in 1 MiB beside the first
        proc = run(mpirun(2, HPCTRAIN, "train", "model.width=256", "train.steps=40", "checkpoint.every_steps=20",
                          f"checkpoint.dir={disk.path}", f"checkpoint.on_error={policy}",
                          f"run.dir={tmp_path / 'run'}"), check=False)
        saved = checkpoint.candidates(disk.path)
        assert [p.name for p in saved] == ["step-00000020"] and checkpoint.verify(saved[0]) is None
        assert "step-00000040: writing the checkpoint failed (No space left on device)" in proc.stderr
        if policy == "stop":
            assert proc.returncode == 2 and not (tmp_path / "run" / "summary.json").exists()
        else:
            assert proc.returncode == 0 and summary(tmp_path / "run")["steps"] == 40
    finally:
        disk.close()


WORLD = ["model.name=mlp", "model.width=64", "data.samples=512", "train.steps=40", "checkpoint.every_steps=20", *QUIET]


@pytest.fixture(scope="module")
def half_way(tmp_path_factory):
    """The uninterrupted 2-rank x 16 run of 40 steps, and one stopped at its step-20 checkpoint (both cases
    below resume a copy of it)."""
    d = tmp_path_factory.mktemp("world")
    run(mpirun(2, HPCTRAIN, "train", *WORLD, "train.batch_size=16", f"run.dir={d / 'ref'}"))
    run(mpirun(2, HPCTRAIN, "train", *WORLD, "train.steps=20", "train.batch_size=16", f"run.dir={d / 'cut'}"))
    return d


@pytest.mark.parametrize("new_world", [1, 4])
def test_resume_with_a_different_world_size(tmp_path, half_way, new_world):
    """Checkpoint at step 20 on 2 ranks x 16, finish on `new_world` ranks with the same global batch: the
    weights match the uninterrupted 2-rank run (in-memory data keeps the global sample order)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(half_way / "cut", resumed)
    cmd = [HPCTRAIN] if new_world == 1 else mpirun(new_world, HPCTRAIN)
    run([*cmd, "train", *WORLD, f"train.batch_size={32 // new_world}", f"run.dir={resumed}"])
    s = summary(resumed)
    assert s["world_size"] == new_world and s["steps"] == 40 and s["resumed_from"].endswith("step-00000020")
    a = torch.load(half_way / "ref" / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_rerunning_a_finished_run_changes_nothing_and_a_longer_one_continues(tmp_path):
    """Re-running a finished run (the README's "Ctrl-C, rerun" after the end, or a resubmitted job) says it is
    complete and leaves every file byte for byte; a larger train.steps trains on from the last checkpoint."""
    args = ["model.name=mlp", "model.width=32", "train.steps=20", "run.log_every=5", f"run.dir={tmp_path}"]
    run(mpirun(2, HPCTRAIN, "train", *args))
    before = file_bytes(tmp_path)
    again = run(mpirun(2, HPCTRAIN, "train", *args))
    assert "already complete at step 20" in again.stderr and "step 1/" not in again.stderr
    assert file_bytes(tmp_path) == before
    run(mpirun(2, HPCTRAIN, "train", *args, "train.steps=30"))
    s = summary(tmp_path)
    assert s["steps"] == 30 and s["resumed_from"].endswith("step-00000020") and s["final_loss"] is not None


CHANGED = ["model.name=mlp", "model.width=32", "train.steps=10", *QUIET]


@pytest.fixture(scope="module")
def finished_sgd_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sgd")
    run([HPCTRAIN, "train", *CHANGED, f"run.dir={d}"])
    return d


@pytest.mark.parametrize("change, says", [
    ("optim.name=adamw", "optim.name was 'sgd' in the checkpoint, 'adamw' now"),
    ("optim.name=lamb", "optim.name was 'sgd' in the checkpoint, 'lamb' now"),
    ("model.width=48", "model.width was 32 in the checkpoint, 48 now"),
])
def test_resuming_with_another_optimizer_or_model_names_the_setting(finished_sgd_run, change, says):
    """Each refused resume leaves the run as it was (all three cases resume the same one), but for exit.json,
    which speaks for the newest start only (an exit 2 leaves none)."""
    d = finished_sgd_run
    before = file_bytes(d, skip=("exit.json",))
    proc = run([HPCTRAIN, "train", *CHANGED, f"run.dir={d}", "train.steps=20", change], check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-2000:]
    assert "--resume never" in proc.stderr and "Traceback" not in proc.stderr
    assert file_bytes(d, skip=("exit.json",)) == before


def test_learning_rate_after_a_resume_on_more_ranks_follows_samples(tmp_path):
    """6 steps on 2 ranks x 16, then on to step 40 on 4 ranks x 16 with optim.lr_scaling = "linear": the
    global batch doubles (32 -> 64) and so does the peak (0.2 -> 0.4). The rates logged after the resume are
    those of the rule in docs/training.md, by hand: the schedule's position is the samples trained on, its
    lengths are steps of the run's first global batch (10 x 32 warmup, 40 x 32 in all)."""
    common = ["model.name=mlp", "model.width=64", "data.samples=512", "train.batch_size=16", "run.log_every=1",
              "optim.lr=0.1", "optim.lr_scaling=linear", "optim.warmup_steps=10", "optim.decay=cosine",
              "optim.min_lr=0.01", f"run.dir={tmp_path}"]
    run(mpirun(2, HPCTRAIN, "train", *common, "train.steps=6"))  # warmup only: train.steps does not enter
    run(mpirun(4, HPCTRAIN, "train", *common, "train.steps=40"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in records if "lr" in r}  # step k's record: the rate of update k - 1
    assert sorted(lr) == list(range(1, 41))

    def cosine(t):  # t schedule steps (of 32 samples) into the 30-step decay
        return 0.01 + (0.4 - 0.01) * 0.5 * (1 + math.cos(math.pi * min(t, 30) / 30))

    want = {k: 0.2 * k / 10 for k in range(1, 7)}  # 2 ranks: peak 0.1 x 2, by step = by samples
    want[7] = 0.4 * (192 + 64) / 320  # update 6: 192 samples seen, 256 once it is in, of 320 warmup samples
    want[8] = 0.4  # update 7: 256 + 64 = 320, the end of warmup
    for k in range(9, 41):  # update k - 1 has seen 192 + (k - 7) * 64 samples: 2 schedule steps per update
        want[k] = cosine((192 + (k - 7) * 64) / 32 - 10)
    assert want[24] == pytest.approx(0.01) and want[23] > 0.01  # the schedule ends at 1280 samples, update 23
    for k, rate in want.items():
        assert lr[k] == pytest.approx(rate, rel=1e-12), k
    # the control: the by-step rule (what hpctrain did before) at the same peak gives other rates after the
    # resume, from warmup to the end
    by_step = {k: 0.4 * k / 10 if k <= 10 else cosine(k - 11) for k in range(7, 41)}
    assert all(by_step[k] != pytest.approx(want[k], rel=1e-6) for k in range(7, 40))
    state = json.loads((tmp_path / "checkpoints" / "step-00000040" / "train_state.json").read_text())
    assert state["samples_seen"] == 6 * 32 + 34 * 64 and state["schedule_batch"] == 32
