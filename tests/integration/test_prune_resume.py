"""Gradual pruning across a real stop and resume: SIGUSR1 to one rank mid-schedule, exit 75, resume; the
masks and the parameters must come out bit-identical to the uninterrupted run's."""

import os
import signal
import subprocess

import torch

from hpctrain import checkpoint
from tests.launch import HPCTRAIN, QUIET, REPO, env, logged_step, mpirun, rank_pid, run, summary, wait_for

STEPS = 800
RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=10",
       f"train.steps={STEPS}", "prune.kind=unstructured", "prune.sparsity=0.8", "prune.start_step=100",
       "prune.end_step=600", "prune.every_steps=50", *QUIET]


def test_masks_survive_a_signal_stop_and_resume_bit_identically(tmp_path):
    ref = tmp_path / "reference"
    run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={ref}", "checkpoint.at_end=false"), timeout=300)
    want = summary(ref)
    d = tmp_path / "stopped"
    proc = subprocess.Popen(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={d}"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(d) >= 250, timeout=120, what="step 250")  # masks at 30%+ by now
    os.kill(rank_pid(proc, 1), signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    saved = checkpoint.candidates(d / "checkpoints")
    stopped_at = int(saved[0].name.split("-")[1])
    assert 250 <= stopped_at < 600  # inside the schedule: masks still to be recomputed after the resume
    masks = torch.load(saved[0] / "extra.pt", weights_only=True)["prune"]
    assert masks["sparsity"] > 0.3 and all(m.dtype == torch.bool for m in masks["masks"].values())
    run(mpirun(2, HPCTRAIN, "train", *RUN, f"run.dir={d}"), timeout=300)
    got = summary(d)
    assert got["resumed_from"] == str(saved[0]) and got["steps"] == STEPS
    assert got["prune"]["masks_sha256_per_rank"] == want["prune"]["masks_sha256_per_rank"]
    assert got["prune"]["masks_sha256_per_rank"][0] == got["prune"]["masks_sha256_per_rank"][1]
    assert got["params_sha256"] == want["params_sha256"]
    assert got["prune"]["masked_fraction"] == want["prune"]["masked_fraction"]
    assert abs(got["prune"]["masked_fraction"] - 0.8) < 1e-4  # round(0.8 n) of the n weights
