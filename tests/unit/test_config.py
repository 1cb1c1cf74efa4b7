import tomllib

import pytest

from hpctrain import config
from hpctrain.config import ConfigError


def test_defaults_are_valid():
    cfg = config.load(None)
    assert cfg.train.steps == 100 and cfg.comm.compression == "none"


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[optim]\nlr = 0.5\n[train]\nsteps = 7\n[run]\ndir = "out dir"\n')
    cfg = config.load(f, ["optim.lr=0.1", "comm.compression=fp16", "comm.fusion_threshold_mb=32",
                          "run.log_all_ranks=true"])
    assert cfg.optim.lr == 0.1  # the command line wins over the file
    assert cfg.train.steps == 7
    assert cfg.run.dir == "out dir"
    assert cfg.comm.compression == "fp16"
    assert cfg.comm.fusion_threshold_mb == 32.0 and isinstance(cfg.comm.fusion_threshold_mb, float)
    assert cfg.run.log_all_ranks is True


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=0.1", "optim.lrr: unknown key; did you mean 'lr'? valid keys in [optim]: name, lr,"),
    ("optim.min_lr=0.5", "optim.min_lr: must not exceed optim.lr=0.05"),
    ("model.name=nosuchmodel", "model.name: 'nosuchmodel' is neither one of mlp, cnn, transformer nor an import path"),
    ("model.args.depth=3", "model.args: is for models given by import path"),
    ("data.path=/tmp/x", None),  # data.source = auto reads it
    ("optimizer.lr=0.1", "unknown section [optimizer]; did you mean 'optim'? valid sections: run, train"),
    ("train.steps=ten", "train.steps: expected an integer, got 'ten'"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.steps=0", "train.steps: must be >= 1"),
    ("optim.lr=-1", "optim.lr: must be a positive number"),
    ("comm.compression=int8", "comm.compression: 'int8' is not one of 'none', 'fp16'"),
    ("optim.zero_stage=3", "optim.zero_stage: 3 is not one of 0, 1, 2"),
    ("run.log_all_ranks=1", "run.log_all_ranks: expected true or false"),
    ("model.heads=3", None),  # valid for the default MLP ...
    ("lr=0.1", "expected section.key=value"),
    ("optim.lr", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    if fragment is None:
        config.load(None, [override])
        return
    with pytest.raises(ConfigError) as e:
        config.load(None, [override])
    assert fragment in str(e.value)


def test_cross_field_check():
    with pytest.raises(ConfigError, match=r"model.heads: must divide model.width=256"):
        config.load(None, ["model.name=transformer", "model.heads=3"])
    with pytest.raises(ConfigError, match=r"data.stage_dir: not supported with fault.elastic = true"):
        config.load(None, ["fault.elastic=true", "data.stage_dir=/tmp/x"])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        config.load(bad)
    notable = tmp_path / "notable.toml"
    notable.write_text("train = 3\n")
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        config.load(notable)


def test_resolved_toml_round_trips(tmp_path):
    cfg = config.load(None, ['run.dir="a \\"quoted\\" dir"', "optim.lr=0.25", "model.name=cnn"])
    f = tmp_path / "resolved.toml"
    f.write_text(config.to_toml(cfg))
    assert config.load(f) == cfg


def test_describe_lists_every_key_with_help():
    text = config.describe()
    for key in ("run.dir", "train.steps", "train.batch_size", "train.seed", "model.name", "optim.lr",
                "comm.compression", "comm.fusion_threshold_mb", "comm.cycle_time_ms", "checkpoint.every_steps"):
        line = next(ln for ln in text.splitlines() if ln.startswith(key + " "))
        assert len(line.split(": ", 1)[1]) > 10, line


@pytest.mark.parametrize("overrides, world, expected", [
    (["data.shuffle_window=16"], 2, ["data.shuffle_window: no effect on synthetic data"]),
    (["data.path=/d", "data.samples=10"], 2, ["data.samples: no effect when reading a dataset"]),
    (["model.name=m:f", "model.width=8", "data.sample_shape=[4]", "data.num_classes=2"], 2,
     ["model.width: no effect for a model given by import path"]),
    (["data.num_classes=3"], 2, ["data.num_classes: no effect with the built-in model 'mlp'"]),
    (["distill.alpha=0.9"], 2, ["distill.alpha: no effect without distill.teacher"]),
    (["checkpoint.at_end=false", "checkpoint.keep=5"], 2, ["checkpoint.keep: no effect when no checkpoint"]),
    (["comm.compression=fp16"], 1, ["comm.compression: no effect on one rank"]),
    (["comm.compression=fp16"], 2, []),
    (["train.loss_scale=1024"], 2, ["train.loss_scale: no effect unless train.precision = \"fp16\""]),
    (["optim.name=adamw", "optim.momentum=0.5"], 2, ["optim.momentum: no effect with optim.name = 'adamw'"]),
    (["optim.gamma=0.5"], 2, ["optim.gamma: no effect unless optim.decay = \"step\""]),
    (["optim.decay=cosine", "optim.min_lr=0.01"], 2, []),
    ([], 2, []),
])
def test_keys_without_effect_are_named(overrides, world, expected):
    notes = config.ineffective(config.load(None, overrides), world)
    assert len(notes) == len(expected)
    for note, fragment in zip(notes, expected, strict=True):
        assert note.startswith(fragment), note


def test_table_overrides_and_lists_round_trip_through_toml():
    cfg = config.load(None, ["model.name=pkg.mod:build", "model.args.depth=4", "model.args.act=\"gelu\"",
                             "data.inputs=[\"x\", \"mask\"]", "data.sample_shape=[3, 8, 8]", "data.num_classes=5"])
    assert cfg.model.args == {"depth": 4, "act": "gelu"} and cfg.data.inputs == ["x", "mask"]
    assert config.from_dict(tomllib.loads(config.to_toml(cfg))) == cfg


def test_data_path_with_synthetic_source_is_refused():
    with pytest.raises(ConfigError, match="data.path: is set .* but data.source = \"synthetic\" ignores it"):
        config.load(None, ["data.source=synthetic", "data.path=/data/x"])
    assert config.load(None, ["data.path=/data/x"]).data.reads_files


def test_renamed_key_still_works_with_a_warning(tmp_path, caplog):
    """train.warmup_steps (steps left out of throughput) is now train.untimed_steps, so that "warm-up" means the
    learning-rate warm-up alone; the old name is taken for one release, with a warning naming both."""
    import logging

    path = tmp_path / "old.toml"
    path.write_text("[train]\nwarmup_steps = 7\n")
    with caplog.at_level(logging.WARNING, logger="hpctrain"):
        cfg = config.load(path)
    assert cfg.train.untimed_steps == 7
    assert "train.warmup_steps is renamed train.untimed_steps" in caplog.text
    assert config.load(None, ["train.warmup_steps=3"]).train.untimed_steps == 3
    assert config.load(None, ["train.untimed_steps=4"]).train.untimed_steps == 4
    with pytest.raises(ConfigError, match="both set"):
        config.load(None, ["train.warmup_steps=3", "train.untimed_steps=4"])
