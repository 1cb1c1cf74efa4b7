"""`bench compare`'s run matrix, command lines and table, without running anything (tests/mpi runs it)."""

import pytest

from hpctrain.bench import compare
from hpctrain.config import UserError, load


@pytest.mark.parametrize("impls, ranks, launcher, message", [
    (("horovod", "hpctrain"), [1], "mpirun", "hpctrain first"),
    (("hpctrain", "tf"), [1], "mpirun", "hpctrain first"),
    (("hpctrain", "torch"), [1, 2], "mpirun", "use --ranks 1"),
    (("hpctrain", "horovod"), [2], "direct", "use --ranks 1"),
])
def test_matrices_that_cannot_run_are_refused_up_front(impls, ranks, launcher, message):
    with pytest.raises(UserError, match=message):
        compare.check_impls(impls, ranks, launcher)


def test_every_model_is_a_valid_training_config():
    for name in compare.MODELS:
        cfg = load(None, compare.overrides(name, 7))
        assert cfg.train.batch_size == 7 and cfg.model.name in name


def test_direct_launch_starts_one_plain_process_with_the_same_settings(tmp_path):
    cmd, env = compare.command("hpctrain", "transformer", 1, 20, str(tmp_path), "direct", 8)
    assert cmd[0].endswith("/hpctrain") and "mpirun" not in cmd and env == {}
    assert {"model.name=transformer", "train.batch_size=8", "data.samples=64", "train.steps=20"} <= set(cmd)
    cmd, env = compare.command("horovod", "cnn", 1, 20, str(tmp_path), "direct")
    assert "mpirun" not in cmd and "-x" not in cmd and set(env) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    cmd, env = compare.command("horovod", "cnn", 2, 20, str(tmp_path))
    assert cmd[:3] == ["mpirun", "-np", "2"] and cmd.count("-x") == 2  # mpirun passes the variables on
    cmd, _ = compare.command("torch", "cnn", 1, 20, str(tmp_path))
    assert cmd[1:4] == ["-m", "hpctrain.bench.peers", "torch"] and "train.batch_size=32" in cmd


def test_table_has_a_column_and_a_ratio_per_implementation():
    row = {"model": "cnn", "ranks": 1, "hpctrain_samples_per_sec": 300.0, "torch_samples_per_sec": 250.0,
           "hpctrain_vs_torch": 1.2, "hpctrain_vs_torch_per_round": [1.1, 1.3]}
    text = compare.format_table({"rows": [row], "rounds": 2, "impls": ["hpctrain", "torch"]})
    header, line, _ = text.splitlines()
    assert header.split() == ["model", "ranks", "hpctrain", "torch", "vs", "torch", "(rounds)"]
    assert line.split() == ["cnn", "1", "300.0", "250.0", "1.200x", "1.10-1.30"]
