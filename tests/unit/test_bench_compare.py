"""`bench compare`'s run matrix, command lines and table, without running anything (tests/mpi runs it)."""

import sys

import pytest

from hpctrain import cli, models
from hpctrain.bench import compare, peers
from hpctrain.config import load
from hpctrain.errors import UserError
from tests.launch import REPO

GPT2 = ["--model", "mymodels:gpt2", "--set", "data.sample_shape=[64]", "--set", "data.sample_kind=tokens",
        "--set", "data.num_classes=256"]


@pytest.fixture
def examples(monkeypatch):
    """docs/examples importable, as PYTHONPATH=docs/examples makes it for the launched runs."""
    monkeypatch.syspath_prepend(str(REPO / "docs" / "examples"))


def compare_args(*argv):
    return cli._parser().parse_args(["bench", "compare", *argv])


@pytest.mark.parametrize("impls, ranks, launcher, message", [
    (("horovod", "hpctrain"), [1], "mpirun", "hpctrain first"),
    (("api", "horovod"), [1], "mpirun", "hpctrain first"),
    (("hpctrain", "tf"), [1], "mpirun", "hpctrain first"),
    (("hpctrain", "api", "api"), [1], "mpirun", "each once"),
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


def test_direct_launch_starts_one_plain_process_with_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    cmd, env = compare.command("hpctrain", compare.overrides("transformer", 8), 1, 20, str(tmp_path), "direct")
    assert cmd[0].endswith("/hpctrain") and "mpirun" not in cmd and env == {}
    assert {"model.name=transformer", "train.batch_size=8", "data.samples=64", "train.steps=20"} <= set(cmd)
    cnn = compare.overrides("cnn", None)
    cmd, env = compare.command("horovod", cnn, 1, 20, str(tmp_path), "direct")
    assert "mpirun" not in cmd and "-x" not in cmd and set(env) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    cmd, env = compare.command("horovod", cnn, 2, 20, str(tmp_path))
    assert cmd[:3] == ["mpirun", "-np", "2"] and cmd.count("-x") == 2  # mpirun passes the variables on
    cmd, _ = compare.command("torch", cnn, 1, 20, str(tmp_path))
    assert cmd[1:4] == ["-m", "hpctrain.bench.peers", "torch"] and "train.batch_size=32" in cmd


def test_model_args_read_as_comma_pairs_or_json_alike():
    pairs = compare.user_model("mymodels:gpt2", "vocab_size=256, seq_len=64")
    assert pairs[:3] == ("model.name=mymodels:gpt2", "model.args.vocab_size=256", "model.args.seq_len=64")
    given = compare.user_model("mymodels:gpt2", '{"vocab_size": 256, "seq_len": 64, "dims": [3, 4], "tag": "a,b"}')
    cfg = load(None, list(given))
    assert cfg.model.name == "mymodels:gpt2"
    assert cfg.model.args == {"vocab_size": 256, "seq_len": 64, "dims": [3, 4], "tag": "a,b"}
    assert load(None, list(pairs)).model.args["vocab_size"] == 256  # an int, as model.args.KEY=VALUE reads it


@pytest.mark.parametrize("path, model_args, sets, message", [
    ("cnn", None, [], "expected an import path package.module:callable, got 'cnn'"),
    ("mymodels:gpt2", "vocab_size", [], "--model-args: expected key=value"),
    ("mymodels:gpt2", "[1, 2]", [], "--model-args: expected key=value"),
    ("mymodels:gpt2", '{"vocab_size": ', [], "--model-args: not a valid JSON object"),
    ("mymodels:gpt2", '{"vocab_size": null}', [], "not null"),
    ("mymodels:gpt2", None, ["optim.lr=0.1"], "--set: expected KEY=VALUE with KEY one of model.args.KEY, "
                                              "data.sample_shape"),
    ("mymodels:gpt2", None, ["model.sync_batchnorm=true"], "every implementation reads alike"),
    ("mymodels:gpt2", None, ["data.num_classes"], "--set: expected KEY=VALUE"),
])
def test_bad_user_model_flags_are_one_line_errors(path, model_args, sets, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compare.user_model(path, model_args, sets)


@pytest.mark.parametrize("argv, message", [
    (["--model-args", "vocab_size=256"], "name it with --model"),
    (["--set", "data.num_classes=10"], "name it with --model"),
    (["--model", "mymodels:nothere"], "has no attribute 'nothere'"),
    (["--model", "not_a_module_here:net"], "cannot import module 'not_a_module_here'"),
    (["--model", "mymodels:ConvNet"], "--set: data.sample_shape: a model given by import path"),
    (["--model", "mymodels:ConvNet", "--set", "data.sample_shape=[3,32,32]"], "data.num_classes"),
    (["--model", "mymodels:ConvNet", "--set", "train.batch_size=0"], "train.batch_size: must be >= 1"),
    (["--models", "cnn,resnet"], "--models: unknown resnet"),
])
def test_main_refuses_a_user_model_it_cannot_run_before_any_run(argv, message, examples, monkeypatch):
    monkeypatch.setattr(compare, "compare", lambda *a, **k: pytest.fail("ran despite a bad flag"))
    with pytest.raises(UserError, match=message):
        compare.main(compare_args(*argv))


def test_main_runs_the_user_model_alone_or_beside_built_ins(examples, monkeypatch):
    seen = {}
    monkeypatch.setattr(compare, "compare", lambda models, ranks, rounds, steps, impls, launcher, *ci: seen.update(
        models=models, steps=steps, impls=impls) or {"rows": [], "rounds": rounds, "impls": list(impls)})
    compare.main(compare_args(*GPT2, "--model-args", "vocab_size=256", "--set", "train.batch_size=8",
                              "--batch", "4", "--impls", "hpctrain,api,horovod"))
    assert list(seen["models"]) == ["mymodels:gpt2"] and seen["steps"] == {"mymodels:gpt2": compare.USER_STEPS}
    assert seen["impls"] == ("hpctrain", "api", "horovod")
    cfg = load(None, seen["models"]["mymodels:gpt2"])
    assert cfg.train.batch_size == 8 and cfg.model.args == {"vocab_size": 256}  # --set after --batch
    assert cfg.data.sample_shape == [64] and cfg.data.sample_kind == "tokens" and cfg.data.num_classes == 256
    compare.main(compare_args(*GPT2, "--models", "cnn", "--steps", "30"))
    assert list(seen["models"]) == ["cnn", "mymodels:gpt2"] and set(seen["steps"].values()) == {30}
    compare.main(compare_args())
    assert list(seen["models"]) == compare.DEFAULT_MODELS.split(",")


def test_api_script_gets_hpctrains_overrides_and_the_sample_shape_of_a_built_in(tmp_path):
    for model in ("cnn", "transformer"):
        sets = compare.overrides(model, None)
        ours, _ = compare.command("hpctrain", sets, 2, 20, str(tmp_path))
        api, env = compare.command("api", sets, 2, 20, str(tmp_path))
        assert api[api.index(sys.executable):][1:3] == ["-m", "hpctrain.bench.api_script"] and env == {}
        assert api[:api.index(sys.executable)] == ours[:ours.index(compare.venv_bin("hpctrain"))]  # the same mpirun
        extra = [a for a in api if a not in ours]
        assert [a.split("=")[0] for a in extra[-3:]] == ["data.sample_shape", "data.sample_kind", "data.num_classes"]
        # an object carries no sample shape: the script's config gives the built-in's own
        cfg = load(None, extra[-3:])
        spec = models.sample_spec(load(None, sets).model)
        assert tuple(cfg.data.sample_shape) == spec.input_shape and cfg.data.num_classes == spec.num_classes
        assert (cfg.data.sample_kind == "tokens") == (model == "transformer")
    user = compare.overrides("mymodels:gpt2", None, compare.user_model("mymodels:gpt2", None, GPT2[3::2]))
    ours, _ = compare.command("hpctrain", user, 1, 20, str(tmp_path))
    api, _ = compare.command("api", user, 1, 20, str(tmp_path))
    assert ours[ours.index("train") + 1:] == api[api.index("hpctrain.bench.api_script") + 1:]


def test_user_module_path_reaches_every_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "docs/examples")
    for impl in ("hpctrain", "api", "horovod"):
        cmd, _ = compare.command(impl, compare.overrides("cnn", None), 2, 20, str(tmp_path))
        assert cmd[cmd.index("-x", cmd.index("-np")) + 1] == "PYTHONPATH"
    monkeypatch.setenv("PYTHONPATH", "")
    assert "PYTHONPATH" not in compare.mpirun(2)


def test_peers_describe_samples_as_hpctrains_pipeline_does(examples):
    cfg = load(None, ["model.name=mymodels:ConvNet", "data.sample_shape=[3,16,16]", "data.num_classes=7"])
    assert peers.sample_shape(cfg) == peers.SampleShape((3, 16, 16), False, 7)
    cfg = load(None, list(compare.overrides("transformer", 4)))
    spec = models.sample_spec(cfg.model)
    assert peers.sample_shape(cfg) == peers.SampleShape(spec.input_shape, True, spec.num_classes)
    with pytest.raises(UserError, match="data.sample_shape"):
        peers.sample_shape(load(None, ["model.name=mymodels:ConvNet"]))
    model, x, y = peers.problem(load(None, ["model.name=mymodels:gpt2", "model.args.width=16", "model.args.layers=1",
                                            "data.sample_shape=[8]", "data.sample_kind=tokens",
                                            "data.num_classes=256", "train.batch_size=2"]), 1, 0)
    assert x.shape == (16, 8) and x.dtype == y.dtype == models.torch.int64 and y.shape == (16, 8)
    assert models.loss_fn(model(x[:2]), y[:2]).ndim == 0  # the loss reads GPT-2's .logits


def fake_run(rate, cpu_ms=1.0, switches=2.0):
    return {"samples_per_sec": rate, "cpu_s_per_sample": cpu_ms / 1000, "involuntary_switches_per_step": switches,
            "step_ms_percentiles": {"p10": 10.0, "p50": 11.0, "p90": 13.0}, "load": 1.5}


def result_of(rows, impls, rounds):
    return {"rows": rows, "rounds": rounds, "impls": list(impls), "load": {"min": 1.0, "median": 1.5, "max": 2.0},
            "host": {"cpus": 2}, "until_ci": None}


def test_table_has_a_column_a_ratio_an_interval_and_a_verdict_per_implementation():
    runs = {"hpctrain": [fake_run(300.0, 2.0), fake_run(310.0, 2.0), fake_run(290.0, 2.1)],
            "torch": [fake_run(250.0, 2.2), fake_run(255.0, 2.25), fake_run(245.0, 2.3)]}
    row = compare.summarise_point("cnn", 1, runs, ["hpctrain", "torch"])
    assert row["hpctrain_vs_torch"] == pytest.approx(300 / 250)
    assert row["hpctrain_vs_torch_per_round"] == pytest.approx([300 / 250, 310 / 255, 290 / 245])
    ci = row["hpctrain_vs_torch_ci"]
    assert ci["verdict"] == "ahead" and ci["n"] == 3 and ci["low"] > 1
    cpu = row["hpctrain_vs_torch_cpu_ci"]
    assert cpu["verdict"] == "ahead" and cpu["high"] < 1  # less CPU per sample: ahead
    assert row["hpctrain_cpu_ms_per_sample"] == pytest.approx(2.0) and row["torch_step_ms"]["p90"] == 13.0
    text = compare.format_table(result_of([row], ["hpctrain", "torch"], 3))
    lines = text.splitlines()
    assert lines[1].split() == ["model", "ranks", "hpctrain", "torch", "vs", "torch", "95%", "CI", "verdict"]
    assert lines[2].split() == ["cnn", "1", "300.0", "250.0", "1.200x", f"{ci['low']:.2f}-{ci['high']:.2f}", "ahead"]
    cpu_line = next(ln for ln in lines if ln.startswith("cnn") and "2.000" in ln)
    assert cpu_line.split()[-1] == "ahead" and "0.889x" in cpu_line  # 2.0 / 2.25, the medians' ratio
    assert "machine load (1-min average as each run started): 1.0-2.0, median 1.5, on 2 CPUs" in text


def test_one_round_prints_no_interval():
    runs = {"hpctrain": [fake_run(100.0)], "horovod": [fake_run(101.0)]}
    row = compare.summarise_point("cnn", 2, runs, ["hpctrain", "horovod"])
    assert row["hpctrain_vs_horovod_ci"]["low"] is None
    line = compare.format_table(result_of([row], ["hpctrain", "horovod"], 1)).splitlines()[2]
    assert line.split()[-3:] == ["0.990x", "-", "-"]


def test_table_gives_the_python_api_its_own_ratios():
    assert compare.ratios(("hpctrain", "api", "horovod")) == [
        ("hpctrain", "horovod"), ("api", "horovod"), ("api", "hpctrain")]
    assert compare.ratios(("hpctrain", "horovod", "ddp")) == [("hpctrain", "horovod"), ("hpctrain", "ddp")]
    impls = ("hpctrain", "api", "horovod")
    runs = {"hpctrain": [fake_run(100.0)], "api": [fake_run(99.0)], "horovod": [fake_run(101.0)]}
    row = compare.summarise_point("mymodels:gpt2", 2, runs, impls)
    header, line = compare.format_table(result_of([row], impls, 1)).splitlines()[1:3]
    assert len(header) == len(line)  # the columns line up, with a model name longer than the built-ins'
    assert header.split() == ["model", "ranks", "hpctrain", "api", "horovod", "vs", "horovod", "95%", "CI",
                              "verdict", "api", "vs", "horovod", "95%", "CI", "verdict", "api", "vs", "hpctrain",
                              "95%", "CI", "verdict"]
    assert line.split() == ["mymodels:gpt2", "2", "100.0", "99.0", "101.0", "0.990x", "-", "-", "0.980x", "-", "-",
                            "0.990x", "-", "-"]


def scripted(monkeypatch, rate_of):
    """compare.run_once replaced by recorded-like figures: ``rate_of(impl, round)``; returns the call log."""
    calls = []

    def run_once(impl, sets, ranks, steps, launcher="mpirun"):
        calls.append(impl)
        return fake_run(rate_of(impl, sum(c == impl for c in calls) - 1))

    monkeypatch.setattr(compare, "run_once", run_once)
    return calls


def test_until_ci_stops_once_every_interval_is_narrow(monkeypatch):
    # ours steadily 10% ahead, +-1% between rounds: three rounds give an interval well inside +-3%
    calls = scripted(monkeypatch, lambda impl, r: (1100.0 if impl == "hpctrain" else 1000.0) * (1.01, 0.99)[r % 2])
    result = compare.compare({"cnn": []}, [1], 1, {"cnn": 10}, ("hpctrain", "horovod"), until_ci=0.03, max_rounds=9)
    assert result["rounds"] == compare.MIN_CI_ROUNDS == 3 and len(calls) == 6 and result["ci_reached"] is True
    ci = result["rows"][0]["hpctrain_vs_horovod_ci"]
    assert ci["verdict"] == "ahead" and ci["high"] - ci["estimate"] <= 0.03
    assert "--until-ci 0.03: every samples/s interval within +-0.03 of its estimate: reached" in \
        compare.format_table(result)


def test_until_ci_gives_up_at_max_rounds_and_says_so(monkeypatch):
    # rounds swing +-20% for ours only: no number of rounds up to 6 narrows that to +-3%
    calls = scripted(monkeypatch, lambda impl, r: 1000.0 * ((1.2, 0.8)[r % 2] if impl == "hpctrain" else 1.0))
    result = compare.compare({"cnn": []}, [1], 3, {"cnn": 10}, ("hpctrain", "horovod"), until_ci=0.03, max_rounds=6)
    assert result["rounds"] == 6 and len(calls) == 12 and result["ci_reached"] is False
    assert result["rows"][0]["hpctrain_vs_horovod_ci"]["verdict"] == "tie"
    assert "NOT reached in 6 rounds" in compare.format_table(result)
    calls.clear()  # without --until-ci: exactly --rounds
    assert compare.compare({"cnn": []}, [1], 2, {"cnn": 10}, ("hpctrain", "horovod"))["rounds"] == 2
    assert len(calls) == 4


def test_interrupting_a_long_run_keeps_its_complete_rounds(monkeypatch):
    def rate(impl, r):
        if r == 2 and impl == "horovod":  # Ctrl-C in round 3, after hpctrain's run of it
            raise KeyboardInterrupt
        return 1000.0 + r

    scripted(monkeypatch, rate)
    result = compare.compare({"cnn": []}, [1], 5, {"cnn": 10}, ("hpctrain", "horovod"))
    assert result["rounds"] == 2 and result["interrupted"] is True
    assert result["rows"][0]["runs"] == {"hpctrain": [1000.0, 1001.0], "horovod": [1000.0, 1001.0]}
    assert "median of 2 interleaved rounds (interrupted: the complete rounds only)" in compare.format_table(result)
    scripted(monkeypatch, lambda impl, r: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # nothing finished: nothing to report
        compare.compare({"cnn": []}, [1], 5, {"cnn": 10}, ("hpctrain", "horovod"))


@pytest.mark.parametrize("argv, message", [(["--until-ci", "0"], "--until-ci 0.0"),
                                           (["--until-ci", "1.5"], "between 0 and 1"),
                                           (["--rounds", "0"], "--rounds and --max-rounds must be >= 1")])
def test_bad_round_flags_are_refused(argv, message, monkeypatch):
    monkeypatch.setattr(compare, "compare", lambda *a, **k: pytest.fail("ran despite a bad flag"))
    with pytest.raises(UserError, match=message):
        compare.main(compare_args(*argv))
