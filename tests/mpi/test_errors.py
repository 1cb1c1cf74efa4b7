"""Errors a user can cause end every rank with exit 2 and one line naming the key or variable."""

import dataclasses

from hpctrain import config
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
