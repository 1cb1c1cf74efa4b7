"""Training techniques on 2 real ranks: each example config in configs/techniques runs, and each technique
is checked for the property that would break if it were wrong."""

import json
import math

import pytest
import torch

from tests.launch import HPCTRAIN, QUIET, REPO, mpirun, run, summary

SHORT = ["train.steps=30", "run.log_every=10", *QUIET]


def train(tmp_path, name, *args):
    d = tmp_path / name
    run(mpirun(2, HPCTRAIN, "train", *args, f"run.dir={d}", "checkpoint.at_end=false"), timeout=300)
    return d, summary(d)


def weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs" / "techniques").glob("*.toml")
                                           if p.name != "distillation.toml"))  # needs a teacher: tested below
def test_example_configs_train_on_two_ranks(tmp_path, config):
    """Each config as committed but shorter and on smaller batches (bf16 on a CPU takes ~0.8 s a step at 32)."""
    _, s = train(tmp_path, "run", "--config", str(REPO / "configs" / "techniques" / config), "train.steps=20",
                 "train.batch_size=16", "run.log_every=5", *QUIET)
    assert s["world_size"] == 2 and s["steps"] == 20 and s["replicas_identical"]
    assert s["final_loss"] < s["initial_loss"]


def test_accumulation_equals_the_whole_batch_at_once(tmp_path):
    """4 micro-batches of 8, all-reduced once, against one backward over the batch of 32: the same update."""
    common = ["model.name=mlp", "train.batch_size=32", *SHORT]
    a, _ = train(tmp_path, "accum", *common, "train.grad_accum=4")
    b, _ = train(tmp_path, "whole", *common, "train.grad_accum=1")
    c, _ = train(tmp_path, "other", *common, "train.grad_accum=4", "train.seed=7")  # control: other data/init
    wa, wb, wc = weights(a), weights(b), weights(c)
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    control = max(float((wa[k] - wc[k]).abs().max()) for k in wa)
    assert diff < 1e-5 < control, (diff, control)


def test_clipping_uses_the_same_norm_on_every_rank(tmp_path):
    d, s = train(tmp_path, "clip", "model.name=mlp", "train.clip_norm=0.01", *SHORT)
    norms = s["grad_norm_per_rank"]
    assert len(norms) == 2 and norms[0] == norms[1] and norms[0] > 0.01 and s["replicas_identical"]
    u, _ = train(tmp_path, "noclip", "model.name=mlp", *SHORT)
    assert any(not torch.equal(weights(d)[k], weights(u)[k]) for k in weights(d))


def test_fp16_overflow_steps_are_skipped_on_every_rank(tmp_path):
    """A loss scale of 2^40 overflows fp16 gradients: the scaler must skip those steps and halve the scale on
    both ranks alike (it unscales after the all-reduce), and the replicas must stay identical."""
    _, s = train(tmp_path, "fp16", "model.name=cnn", "model.width=8", "train.precision=fp16",
                 "train.loss_scale=1099511627776", *SHORT)
    skipped, scales = s["skipped_steps_per_rank"], s["loss_scale_per_rank"]
    assert skipped[0] == skipped[1] >= 1 and scales[0] == scales[1] < 2.0 ** 40
    assert s["replicas_identical"] and math.isfinite(s["final_loss"])


def test_bf16_trains(tmp_path):
    _, s = train(tmp_path, "bf16", "model.name=mlp", "train.precision=bf16", *SHORT)
    assert s["final_loss"] < s["initial_loss"] and s["skipped_steps_per_rank"] == [0, 0]


def test_schedule_values_at_chosen_steps(tmp_path):
    """lr 0.1 scaled linearly by 2 ranks (peak 0.2), 10 warm-up steps, cosine to 0 over the other 40."""
    d, _ = train(tmp_path, "sched", "model.name=mlp", "train.steps=50", "run.log_every=1", "optim.lr=0.1",
                 "optim.lr_scaling=linear", "optim.warmup_steps=10", "optim.decay=cosine")
    lr = {r["step"]: r["lr"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    # step k's record holds the rate its update used: the schedule at k-1 steps taken
    expected = {1: 0.2 * 1 / 10, 5: 0.2 * 5 / 10, 10: 0.2, 11: 0.2, 35: 0.1 * (1 + math.cos(math.pi * 24 / 40)),
                50: 0.1 * (1 + math.cos(math.pi * 39 / 40))}
    for step, want in expected.items():
        assert lr[step] == pytest.approx(want, rel=1e-9), step


def test_distillation_from_a_teacher_checkpoint(tmp_path):
    teacher, _ = train(tmp_path, "teacher", "model.name=mlp", "model.width=128", "train.steps=60",
                       "checkpoint.every_steps=60", *QUIET)
    _, s = train(tmp_path, "student", "--config", str(REPO / "configs" / "techniques" / "distillation.toml"),
                 f"distill.teacher={teacher / 'checkpoints'}", "train.steps=60", *QUIET)
    assert s["final_loss"] < s["initial_loss"] and s["replicas_identical"] and s["num_parameters"] < 10_000
    bad = run(mpirun(2, HPCTRAIN, "train", f"distill.teacher={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'x'}"),
              check=False)
    assert bad.returncode == 2 and "distill.teacher" in bad.stderr and "nowhere" in bad.stderr


def test_tensorboard_timeline_and_report_are_written(tmp_path):
    d, s = train(tmp_path, "obs", "model.name=mlp", "run.timeline=true", "eval.every_steps=10",
                 "data.val_samples=256", "train.steps=30", "run.log_every=10")
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    timeline = (d / "horovod-timeline.json").read_text()
    assert timeline.startswith("[") and "allreduce" in timeline.lower()
    report = (d / "report.md").read_text()
    assert f"{s['final_loss']:.4f}" in report and (d / "loss.png").read_bytes().startswith(b"\x89PNG")
