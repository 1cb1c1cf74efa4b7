"""`bench memory`'s search, argument checks and command lines, without launching anything (the committed
scaling_studies/results/bench-memory run is the real one; tests/mpi/test_bench_memory.py runs the peers)."""

import pytest

from hpctrain import cli
from hpctrain.bench import memory
from hpctrain.errors import UserError


@pytest.mark.parametrize("answer", [0, 1, 2, 7, 31, 32, 33, 100, 511, 512])
@pytest.mark.parametrize("guess", [1, 5, 40, 600])
def test_largest_finds_the_deepest_that_fits_trying_each_depth_once(answer, guess):
    tried = []

    def fits(d):
        assert d not in tried, f"depth {d} tried twice"
        assert 1 <= d <= 512
        tried.append(d)
        return d <= answer

    assert memory.largest(fits, guess, 512) == answer
    # a good guess costs few runs: the bracket doubles and the bisection halves
    if guess == answer and answer:
        assert len(tried) <= 2 + 2 * max(1, answer // 4).bit_length()


def test_largest_with_a_measurement_that_is_not_monotone_still_ends_beside_a_failure():
    """Peak memory of two runs at nearly the same depth can swap places by a few MiB: the search must
    still end, on a depth that fitted next to one that did not."""
    tried = {}

    def fits(d):
        tried[d] = d <= 12 and d != 11  # 11 measured over the budget, 12 under it
        return tried[d]

    got = memory.largest(fits, 4, 64)
    assert tried[got] and tried[got + 1] is False
    assert 11 in tried  # the case this test is about happened


def test_first_guess_follows_the_line_through_two_runs():
    small, large = {"peak_mib": 500.0}, {"peak_mib": 560.0}  # 10 MiB per layer from depth 2 to 8
    assert memory.first_guess(small, large, 2, 8, 1000.0) == 52
    assert memory.first_guess(small, {"peak_mib": 499.0}, 2, 8, 1000.0) == 16  # flat: look further out


def args(*argv):
    return cli._parser().parse_args(["bench", "memory", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--configs", "3"], "--configs: '3'"),
    (["--configs", ","], "--configs: give at least one"),
    (["--peers", "deepspeed"], "--peers: unknown deepspeed"),
    (["--budget-mb", "0"], "--budget-mb"),
    (["--steps", "1"], "--steps at least 2"),
    (["--out", "/proc/nowhere/x.json"], "--out /proc/nowhere/x.json"),
])
def test_bad_arguments_are_one_line_user_errors(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as e:
        memory.main(args(*argv))
    assert "\n" not in str(e.value)


def test_parse_configs():
    assert memory.parse_configs("0, 2ac,1") == [(0, False), (2, True), (1, False)]


def test_commands_train_the_same_model_with_adamw_under_each_launcher():
    opts = memory.Options(1024, 2, 64, 4, 32, 4, 16, 3, 1, 5, ("zero", "fsdp"))
    sets = memory.model_sets(opts, 6, True)
    ours = memory.command("hpctrain", 2, sets, opts, 3, "/tmp/x")
    assert ours[:3] == ["mpirun", "-np", "2"]
    assert {"optim.name=adamw", "optim.zero_stage=2", "model.depth=6", "model.activation_checkpointing=true",
            "train.steps=3", memory.LR} <= set(ours)
    peer = memory.command("zero", 0, sets, opts, 3, "/tmp/x")
    assert peer[0].endswith("torchrun") and "--nproc_per_node=2" in peer
    assert peer[peer.index("hpctrain.bench.peers") + 1] == "zero"
    assert set(sets) | {memory.LR} <= set(peer)


def test_tables_name_every_configuration_and_the_ratio_to_zero():
    row = {"params": 1000, "peak_mib": 900.0, "held_mib": 10.0, "formula_mib": 9.0, "optimizer_state_mib": 4.0,
           "samples_per_sec": 12.0}
    result = {"options": {"budget_mb": 1024, "ranks": 2, "width": 64, "heads": 4, "seq_len": 32, "batch": 4,
                          "rounds": 1, "compare_steps": 5},
              "largest": [{"stage": 0, "recompute": False, "depth": 4, **row},
                          {"stage": 2, "recompute": True, "depth": 10, **row, "params": 2500},
                          {"stage": 1, "recompute": False, "depth": 0}],
              "compare": {"depth": 4, "rows": memory.with_ratios([
                  {"impl": "hpctrain z0", "params": 1000, "samples_per_sec": 11.0, "peak_mib": 900.0,
                   "samples_per_sec_each_round": [11.0, 12.0]},
                  {"impl": "hpctrain z1", "params": 1000, "samples_per_sec": 10.0, "peak_mib": 800.0,
                   "samples_per_sec_each_round": [10.0, 12.0]},
                  {"impl": "zero", "params": 1000, "samples_per_sec": 8.0, "peak_mib": 850.0,
                   "samples_per_sec_each_round": [8.0, 9.6]}])}}
    rows = {r["impl"]: r for r in result["compare"]["rows"]}
    assert rows["hpctrain z1"]["vs_zero"]["estimate"] == pytest.approx(1.25)  # 10/8 and 12/9.6, both rounds
    assert rows["hpctrain z1"]["vs_z0"]["estimate"] == pytest.approx((10 / 11) ** 0.5)  # geometric mean
    assert "vs_z0" not in rows["hpctrain z0"] and "vs_zero" not in rows["zero"]
    text = memory.format_tables(result)
    assert "2.50x" in text  # 2500 / 1000 parameters at stage 2 + recompute
    assert "none fits" in text
    assert "1.250x" in text and "ZeroRedundancyOptimizer" in text
