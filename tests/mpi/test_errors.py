"""Errors a user can cause end every rank with exit 2 and one line naming the key or variable."""

import dataclasses

import pytest

from hpctrain import config
from tests.data_helpers import ReadOnlyDir, SmallDisk, make_dataset
from tests.launch import HPCTRAIN, mpirun, run


def test_bad_config_key_exits_2_on_one_rank(tmp_path):
    proc = run([HPCTRAIN, "train", "optim.lrr=0.1", f"run.dir={tmp_path}"], check=False)
    assert proc.returncode == 2
    keys = ", ".join(f.name for f in dataclasses.fields(config.OptimConfig))  # the list the message must give
    assert proc.stderr.strip() == ("hpctrain: error: optim.lrr: unknown key; did you mean 'lr'? "
                                   f"valid keys in [optim]: {keys}")
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_config_exits_2_under_mpirun_before_communicating(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[comm]\ncompression = 'int8'\n")
    proc = run(mpirun(2, HPCTRAIN, "train", "--config", str(cfg)), check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("comm.compression: 'int8' is not one of 'none', 'fp16'") == 1  # rank 0 only
    assert "MPI_ABORT" not in proc.stderr


def test_missing_config_file(tmp_path):
    proc = run([HPCTRAIN, "train", "--config", str(tmp_path / "nope.toml")], check=False)
    assert proc.returncode == 2 and "nope.toml: config file not found" in proc.stderr


def test_gloo_operations_under_mpirun_are_refused(tmp_path):
    proc = run(mpirun(2, "-x", "HOROVOD_CPU_OPERATIONS=gloo", HPCTRAIN, "train", f"run.dir={tmp_path}"),
               check=False, timeout=60)
    assert proc.returncode == 2
    assert "HOROVOD_CPU_OPERATIONS=gloo under openmpi segfaults" in proc.stderr


@pytest.fixture
def read_only(tmp_path):
    ro = ReadOnlyDir(tmp_path / "ro")
    if not ro.mounted:
        pytest.skip(f"cannot mount a tmpfs here ({ro.why}); CI runs as root and can")
    yield ro.path
    ro.close()


@pytest.mark.parametrize("which", ["checkpoint.dir", "run.dir"])
def test_unwritable_directory_exits_2_before_the_first_step(tmp_path, read_only, which):
    target = read_only / "sub"
    dirs = {"checkpoint.dir": [f"checkpoint.dir={target}", f"run.dir={tmp_path / 'run'}"],
            "run.dir": [f"run.dir={target}"]}[which]
    proc = run(mpirun(2, HPCTRAIN, "train", "train.steps=50", *dirs), check=False, timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"hpctrain: error: {which}: {target} is not writable (Read-only file system)" in proc.stderr
    assert "step 1/" not in proc.stderr and proc.stderr.count("hpctrain: error") == 1  # before training, agreed


def test_checkpoint_dir_without_room_exits_2_before_the_first_step(tmp_path):
    disk = SmallDisk(tmp_path / "small")
    if not disk.mounted:
        pytest.skip(f"cannot mount a tmpfs here ({disk.why}); CI runs as root and can")
    try:  # width 1024: ~1.2 M parameters, 4.9 MB of weights and as much momentum, in 1 MiB
        proc = run(mpirun(2, HPCTRAIN, "train", "model.width=1024", f"checkpoint.dir={disk.path}",
                          f"run.dir={tmp_path / 'run'}"), check=False, timeout=90)
        assert proc.returncode == 2
        assert f"checkpoint.dir: {disk.path} has 1 MiB free, a checkpoint needs about 9 MiB" in proc.stderr
        assert "step 1/" not in proc.stderr
    finally:
        disk.close()


@pytest.mark.parametrize("name, says", [
    ("manifest.json", "is the manifest file: pass its directory"),
    ("shard-00000.h5", "is one shard of a dataset: pass the dataset directory"),
    ("nothing-here", "dataset directory not found (relative paths are relative to the working directory)"),
])
def test_data_path_to_a_file_says_what_it_is(tmp_path, name, says):
    root, _ = make_dataset(tmp_path)
    proc = run([HPCTRAIN, "train", "model.input_dim=4", f"data.path={root / name}", f"run.dir={tmp_path / 'r'}"],
               check=False)
    assert proc.returncode == 2 and f"{root / name}: {says}" in proc.stderr, proc.stderr


def test_last_step_checkpoint_is_written_and_logged_once(tmp_path):
    proc = run(mpirun(2, HPCTRAIN, "train", "model.width=32", "train.steps=20", "checkpoint.every_steps=10",
                      f"run.dir={tmp_path}"))
    assert proc.stderr.count("step-00000020 written") == 1 and proc.stderr.count("step-00000010 written") == 1
