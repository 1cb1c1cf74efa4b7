"""Users' own models, losses, transforms, data and scripts on real ranks: a user module written to a
temporary directory (on PYTHONPATH) trains under mpirun and horovodrun, keeps the data-parallel
equivalence, resumes bit-identically after SIGUSR1, and every mistake in it ends every rank with exit 2
and one line naming the key."""

import json
import os
import signal
import subprocess
import textwrap

import pytest
import torch

from tests.launch import (
    BIN,
    HPCTRAIN,
    QUIET,
    REPO,
    env,
    horovodrun,
    logged_step,
    mpirun,
    rank_pid,
    run,
    summary,
    wait_for,
)

USER_MODULE = '''
import os

import torch
from torch import nn


class MLP(nn.Module):
    """Returns a tuple (logits, features); with aux, a branch used only on some batches (and so on some
    ranks only at a step) gets no gradient there."""

    def __init__(self, dim=16, hidden=32, classes=4, aux=False):
        super().__init__()
        self.a, self.b, self.aux_head = nn.Linear(dim, hidden), nn.Linear(hidden, classes), nn.Linear(hidden, 1)
        self.aux = aux

    def forward(self, x):
        h = torch.relu(self.a(x))
        logits = self.b(h)
        if self.aux and float(x[0, 0]) > 0:
            logits = logits + 0.1 * self.aux_head(h)
        return logits, h


class BNNet(nn.Module):
    def __init__(self, dim=16, hidden=32, classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


def noisy(inputs, targets, generator):
    return inputs + 0.3 * torch.randn(inputs.shape, generator=generator), targets


def top1(outputs, targets):
    logits = outputs[0] if isinstance(outputs, tuple) else outputs  # a user's metric gets the raw outputs
    return (logits.argmax(-1) == targets).float().mean()


def not_a_module(**kw):
    return 42


def raises(**kw):
    raise ValueError("hidden must be even")


def raises_on_rank_1(**kw):
    if os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
        raise RuntimeError("only rank 1 fails")
    return MLP()


def bad_loss(outputs, targets):
    return outputs


def transform_raises(inputs, targets, generator):
    raise KeyError("augmentation table")
'''

SCRIPT = '''
import json
import os
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

import hpctrain
from usermods import BNNet, top1


class Points(Dataset):
    """A map-style dataset: noisy points around one centre per class."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        centres = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        self.y = rng.integers(0, 4, n)
        self.x = (centres[self.y] + 0.5 * rng.standard_normal((n, 16))).astype(np.float32)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


class CountingTrainer(hpctrain.Trainer):
    """A custom step: the documented hook, calling the built-in one."""

    custom_steps = 0

    def train_step(self, inputs, target):
        self.custom_steps += 1
        return super().train_step(inputs, target)


summary = hpctrain.fit({"train": {"batch_size": 8}, "run": {"log_every": 10, "report": False}},
                       model=lambda: BNNet(), loss=torch.nn.functional.cross_entropy,
                       train_data=Points(400, 1), val_data=Points(100, 2), metric=top1,
                       overrides=sys.argv[1:], trainer_class=CountingTrainer)
if os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":  # one line: two ranks' prints may run together
    print("SUMMARY " + json.dumps({k: summary.get(k) for k in ("steps", "val_metric", "params_sha256", "complete")}))
'''

LINEAR = ["model.args.dim=16", "data.sample_shape=[16]", "data.num_classes=4", "data.samples=1024",
          "run.log_every=10", "optim.lr=0.1", *QUIET]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "usermods.py").write_text(USER_MODULE)
    (d / "train_mine.py").write_text(SCRIPT)
    return d


def user_env(user_dir) -> dict:
    return {"PYTHONPATH": str(user_dir)}


def weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def max_abs_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("launcher", ["mpirun", "horovodrun"])
def test_user_module_trains_on_two_ranks(tmp_path, user_dir, launcher):
    """A tuple-returning model with a branch some ranks skip at a step: trains, no hang, replicas equal."""
    args = [HPCTRAIN, "train", "model.name=usermods:MLP", "model.args.aux=true", *LINEAR, "train.steps=60",
            "data.val_samples=128", "eval.metric=usermods:top1", f"run.dir={tmp_path}"]
    run(mpirun(2, *args) if launcher == "mpirun" else horovodrun(2, *args), **user_env(user_dir))
    s = summary(tmp_path)
    assert s["model"] == "usermods:MLP" and s["steps"] == 60 and s["world_size"] == 2
    assert s["replicas_identical"] and s["final_loss"] < s["initial_loss"]
    assert 0.0 <= s["val_metric"] <= 1.0 and s["val_metric"] == pytest.approx(s["val_accuracy"])
    saved = json.loads(next((tmp_path / "checkpoints").glob("step-*/train_state.json")).read_text())
    assert saved["config"]["model"]["name"] == "usermods:MLP" and saved["config"]["model"]["args"]["aux"] is True


EQUIV = ["train.steps=8", "optim.lr=0.1", "optim.momentum=0.9", *LINEAR[:4]]


@pytest.mark.parametrize("model, extra, tolerance", [
    ("usermods:MLP", [], 1e-6),  # fp32: only summation order differs
    ("usermods:BNNet", ["model.sync_batchnorm=true"], 1e-5),  # statistics over the global batch
    ("usermods:BNNet", ["model.sync_batchnorm=true", "optim.zero_stage=2"], 1e-5),  # and sharded state
])
def test_two_ranks_match_one_rank_with_double_batch(tmp_path, user_dir, model, extra, tolerance):
    one, two = tmp_path / "one", tmp_path / "two"
    common = [HPCTRAIN, "train", f"model.name={model}", *EQUIV, *extra]
    run([*common, "train.batch_size=32", f"run.dir={one}"], **user_env(user_dir))
    run(mpirun(2, *common, "train.batch_size=16", f"run.dir={two}"), **user_env(user_dir))
    assert max_abs_diff(weights(one), weights(two)) < tolerance


def test_batchnorm_without_sync_is_not_equivalent(tmp_path, user_dir):
    """Control for the SyncBatchNorm case above: per-rank batch statistics break the equivalence."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [HPCTRAIN, "train", "model.name=usermods:BNNet", *EQUIV]
    run([*common, "train.batch_size=32", f"run.dir={one}"], **user_env(user_dir))
    run(mpirun(2, *common, "train.batch_size=16", f"run.dir={two}"), **user_env(user_dir))
    assert max_abs_diff(weights(one), weights(two)) > 1e-3


STEPS = 1500
RESUME = ["model.name=usermods:BNNet", "data.transform=usermods:noisy", *LINEAR, "train.batch_size=16",
          f"train.steps={STEPS}"]


def test_batchnorm_model_with_transform_resumes_bit_identically_after_sigusr1(tmp_path, user_dir):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run(mpirun(2, HPCTRAIN, "train", *RESUME, f"run.dir={ref}", "checkpoint.at_end=false"), **user_env(user_dir))
    proc = subprocess.Popen(mpirun(2, HPCTRAIN, "train", *RESUME, f"run.dir={cut}"), cwd=REPO,
                            env=env(**user_env(user_dir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(cut) >= 200, what="step 200")
    os.kill(rank_pid(proc, 1), signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    assert not (cut / "summary.json").exists()
    run(mpirun(2, HPCTRAIN, "train", *RESUME, f"run.dir={cut}"), **user_env(user_dir))
    assert summary(cut)["resumed_from"] and summary(cut)["params_sha256"] == summary(ref)["params_sha256"]
    a, b = weights(ref), weights(cut)
    assert any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm buffers (rank 0's) too


def script(user_dir, np_: int, *overrides: str, launcher=mpirun) -> list[str]:
    return launcher(np_, str(BIN / "python"), str(user_dir / "train_mine.py"), *overrides)


def script_summary(proc) -> dict:
    # horovodrun prefixes "[1,0]<stdout>:", and two ranks' lines may run together: read the first object only
    line = next(ln for ln in proc.stdout.splitlines() if "SUMMARY " in ln)
    return json.JSONDecoder().raw_decode(line.split("SUMMARY ", 1)[1])[0]


def test_script_with_a_map_style_dataset_resumes_mid_epoch_exactly(tmp_path, user_dir):
    """The Python API under horovodrun (as Horovod users launch scripts) and mpirun: a Dataset of 400
    samples at a global batch of 16 is 25 steps an epoch; stopping at step 30 leaves the position in the
    middle of epoch 1, and continuing to 60 gives the uninterrupted run's parameters bit for bit."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    whole = run(script(user_dir, 2, "train.steps=60", f"run.dir={ref}", "checkpoint.at_end=false",
                       launcher=horovodrun), **user_env(user_dir))
    first = run(script(user_dir, 2, "train.steps=30", f"run.dir={cut}"), **user_env(user_dir))
    assert script_summary(first)["steps"] == 30
    state = json.loads(next((cut / "checkpoints").glob("step-00000030/train_state.json")).read_text())
    assert state["data"]["epoch"] == 1 and state["data"]["consumed"] == 5 * 16  # mid-epoch
    rest = run(script(user_dir, 2, "train.steps=60", f"run.dir={cut}"), **user_env(user_dir))
    s_whole, s_rest = script_summary(whole), script_summary(rest)
    assert s_rest["params_sha256"] == s_whole["params_sha256"] and s_rest["steps"] == 60
    assert 0 < s_whole["val_metric"] <= 1
    again = run(script(user_dir, 2, "train.steps=60", f"run.dir={cut}"), **user_env(user_dir))
    assert script_summary(again)["complete"] is True  # a finished run is left as it is


def test_script_exits_75_on_sigusr1_and_resumes(tmp_path, user_dir):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    steps = "train.steps=600"
    whole = run(script(user_dir, 2, steps, f"run.dir={ref}", "checkpoint.at_end=false"), **user_env(user_dir))
    proc = subprocess.Popen(script(user_dir, 2, steps, f"run.dir={cut}"), cwd=REPO, env=env(**user_env(user_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(cut) >= 100, what="step 100")
    os.kill(rank_pid(proc, 0), signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    rest = run(script(user_dir, 2, steps, f"run.dir={cut}"), **user_env(user_dir))
    assert script_summary(rest)["params_sha256"] == script_summary(whole)["params_sha256"]


def test_gpt2_example_loss_falls(tmp_path):
    """Hugging Face's GPT-2 architecture (built from a small GPT2Config) by import path, on 2 ranks."""
    run(mpirun(2, HPCTRAIN, "train", "--config", "docs/examples/gpt2.toml", "train.steps=40",
               "model.args.seq_len=32", "data.sample_shape=[32]", "data.samples=1024", "data.val_samples=0",
               f"run.dir={tmp_path}"), timeout=300, PYTHONPATH=str(REPO / "docs" / "examples"))
    s = summary(tmp_path)
    assert s["model"] == "mymodels:gpt2" and s["replicas_identical"]
    assert s["final_loss"] < s["initial_loss"] - 1.0  # from ~ln(256) = 5.5 towards the chain's entropy


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """HDF5 datasets: 'train' with labels 0..9; 'val13' with labels 0..12."""
    d = tmp_path_factory.mktemp("labelled")
    for name, classes, split in (("train", 10, "train"), ("val13", 13, "val")):
        run([HPCTRAIN, "data", "synth", str(d / name), "--task", "vectors", "--shape", "16", "--samples", "256",
             "--classes", str(classes), "--split", split])
    return d


BAD = [
    (["model.name=nosuch_mod:Net"], "model.name: cannot import module 'nosuch_mod'"),
    (["model.name=usermods:Nope"], "model.name: 'usermods' has no attribute 'Nope'"),
    (["model.name=usermods:raises"], "model.name: usermods:raises(dim=16) raised ValueError: hidden must be even"),
    (["model.name=usermods:not_a_module"], "model.name: usermods:not_a_module returned int, not a torch.nn.Module"),
    (["model.name=usermods:raises_on_rank_1"], "model.name: usermods:raises_on_rank_1(dim=16) raised RuntimeError: "
                                               "only rank 1 fails"),
    (["model.name=usermods:MLP", "model.args.dim=7"], "model.name: the model's forward on data inputs "
                                                      "([4, 16] float32) raised RuntimeError: mat1 and mat2"),
    (["model.name=usermods:MLP", "train.loss=usermods:bad_loss"], "train.loss: must return a scalar float tensor"),
    (["model.name=usermods:MLP", "data.transform=usermods:transform_raises"],
     "data.transform: the transform raised KeyError: 'augmentation table'"),
    (["model.name=usermods:MLP", "data.num_classes=6"], "data: the synthetic data has labels 0..5 but the "
                                                        "model predicts 4 classes"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_user_code_exits_2_on_every_rank_with_the_key(tmp_path, user_dir, overrides, message):
    base = ["model.args.dim=16", "data.sample_shape=[16]", "data.num_classes=4"]
    proc = run(mpirun(2, HPCTRAIN, "train", *base, *overrides, f"run.dir={tmp_path / 'run'}"), check=False,
               timeout=90, **user_env(user_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("hpctrain: error") == 1  # one line, from rank 0: the ranks agreed
    assert "Traceback (most recent call last)" not in proc.stderr  # hpctrain's own frames never show
    assert not (tmp_path / "run").exists()  # nothing half-started


def test_user_traceback_follows_the_line(tmp_path, user_dir):
    proc = run([HPCTRAIN, "train", "model.name=usermods:raises", "data.sample_shape=[16]", "data.num_classes=4",
                f"run.dir={tmp_path}"], check=False, **user_env(user_dir))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert lines[0] == "hpctrain: error: model.name: usermods:raises() raised ValueError: hidden must be even"
    assert lines[1] == "Traceback of your code (most recent call last):"
    assert "usermods.py" in lines[2] and "raise ValueError" in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["data.inputs=nope"], "data.inputs: {train} has no field 'nope'; its fields are x, y"),
    (["data.val_path={val13}"], "data.val_path: {val13} has labels 0..12 but the model predicts 10 classes"),
])
def test_bad_dataset_for_the_model_exits_2_before_training(tmp_path, labelled, overrides, message):
    paths = {"train": labelled / "train", "val13": labelled / "val13"}
    args = [o.format(**paths) for o in overrides]
    proc = run(mpirun(2, HPCTRAIN, "train", "model.name=mlp", "model.input_dim=16", f"data.path={paths['train']}",
                      *args, f"run.dir={tmp_path / 'run'}"), check=False, timeout=90)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message.format(**paths) in proc.stderr
    assert not (tmp_path / "run").exists()


def test_labels_outside_the_model_in_training_data(tmp_path, labelled):
    proc = run([HPCTRAIN, "train", "model.name=mlp", "model.input_dim=16", "model.num_classes=8",
                f"data.path={labelled / 'train'}", f"run.dir={tmp_path}"], check=False)
    assert proc.returncode == 2
    assert f"data.path: {labelled / 'train'} has labels 0..9 but the model predicts 8 classes" in proc.stderr


def test_checkpoint_rebuilds_the_user_model_and_names_a_lost_import(tmp_path, user_dir):
    """A teacher checkpoint of a user model is rebuilt from the checkpoint alone; once its module is gone,
    distillation from it (and resuming it) fails with exit 2 naming the checkpoint and the import."""
    teacher = tmp_path / "teacher"
    run([HPCTRAIN, "train", "model.name=usermods:MLP", *LINEAR, "train.steps=20", f"run.dir={teacher}"],
        **user_env(user_dir))
    ckpt = next((teacher / "checkpoints").glob("step-*"))
    student = ["model.name=mlp", "model.input_dim=16", "model.num_classes=4", "model.width=16",
               "data.samples=1024", "train.steps=10", f"distill.teacher={ckpt}"]
    run([HPCTRAIN, "train", *student, f"run.dir={tmp_path / 'student'}"], **user_env(user_dir))
    assert summary(tmp_path / "student")["teacher"] == str(ckpt)
    moved = tmp_path / "moved"
    moved.mkdir()
    proc = run([HPCTRAIN, "train", *student, f"run.dir={tmp_path / 'student2'}"], check=False,
               PYTHONPATH=str(moved))
    assert proc.returncode == 2
    assert f"distill.teacher {ckpt}: model.name: cannot import module 'usermods'" in proc.stderr


def test_checkpoint_loads_tensors_only(tmp_path, user_dir):
    """weights_only loading: a checkpoint whose tensor file holds a pickled object is refused, not run."""
    run([HPCTRAIN, "train", "model.name=usermods:MLP", *LINEAR, "train.steps=5", f"run.dir={tmp_path}"],
        **user_env(user_dir))
    ckpt = next((tmp_path / "checkpoints").glob("step-*"))
    marker = tmp_path / "pwned"
    payload = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"x": Evil()}}, "{ckpt / 'extra.pt'}")
    """)
    subprocess.run([str(BIN / "python"), "-c", payload], check=True)
    from hpctrain import checkpoint

    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(ckpt)
    assert not marker.exists()
