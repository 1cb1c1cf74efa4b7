import json
import logging
import math

import pytest

from hpctrain.errors import UserError
from hpctrain.scaling import comm_model, report
from hpctrain.scaling.comm_model import Level, ModelError
from hpctrain.scaling.report import ModelInputs, ScalingError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BREAKDOWN = {"data": 1.0, "forward_backward": 6.0, "allreduce_wait": 2.0, "optimizer": 0.5}


def record(mode, p, step_ms, batch, **extra):
    """A record as `hpctrain scaling run` writes it: ``batch`` is per rank for weak, global for strong; the
    throughput follows from the slowest rank's step time (``max``), as hpctrain.metrics computes it."""
    global_batch = batch * p if mode == "weak" else batch
    rec = {"mode": mode, "world_size": p, "samples_per_sec": global_batch / (step_ms / 1000),
           "samples_per_sec_per_rank": {"min": 1.0, "mean": 1.0, "max": 1.0},
           # min and mean below max: the report must use max, the step time behind samples_per_sec
           "step_time_ms": {"min": 0.8 * step_ms, "mean": 0.9 * step_ms, "max": step_ms},
           "batch_size": global_batch // p, "global_batch_size": global_batch, "model": "mlp",
           "num_parameters": 25_000_000, "compression": "none", "launcher": "mpirun",
           "host": {"hostname": "node01", "cpus": 32}, "command": f"hpctrain scaling run --mode {mode}",
           "time": 1.7e9 + p}
    rec.update(extra)
    return rec


# Strong: global batch 360, X = 100, 180, 300 samples/s -> T = 3600, 2000, 1200 ms. At 2 ranks three repeats
# (170, 180, 250 samples/s) whose median is 180.
STRONG = [record("strong", 1, 3600.0, 360),
          record("strong", 2, 360 / 170 * 1000, 360), record("strong", 2, 2000.0, 360),
          record("strong", 2, 360 / 250 * 1000, 360),
          record("strong", 4, 1200.0, 360)]
# Weak: 32 samples per rank, T = 10, 11, 12.5 ms.
WEAK = [record("weak", p, t, 32, breakdown_ms=BREAKDOWN, threads_per_rank=2 if p == 1 else 1)
        for p, t in ((1, 10.0), (2, 11.0), (4, 12.5))]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def synthetic_allreduce(alpha, beta, p, impl="horovod"):
    results = []
    for k in range(10, 29, 2):  # 1 KiB .. 256 MiB
        n = 2**k
        t = 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta
        results.append({"bytes": n, "impl": impl, "time_s": t, "algbw_GBps": n / t / 1e9,
                        "busbw_GBps": n / t / 1e9 * 2 * (p - 1) / p, "iters": 20})
    return {"world_size": p, "memcpy_GBps": 10.0, "results": results}


def test_strong_efficiency_is_t1_over_p_tp():
    rows = report.efficiency_table(STRONG, "strong")
    assert [r["ranks"] for r in rows] == [1, 2, 4]
    assert [r["runs"] for r in rows] == [1, 3, 1]
    assert [r["samples_per_sec"] for r in rows] == pytest.approx([100.0, 180.0, 300.0])
    assert [r["step_time_ms"] for r in rows] == pytest.approx([3600.0, 2000.0, 1200.0])
    # by hand: T1 / (p * Tp) = 3600/3600, 3600/(2*2000), 3600/(4*1200)
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.9, 0.75])
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 1.8, 3.0])
    assert rows[0]["breakdown_ms"] is None and rows[0]["baseline_ranks"] == 1


def test_weak_efficiency_is_t1_over_tp():
    rows = report.efficiency_table(STRONG + WEAK, "weak")
    assert [r["step_time_ms"] for r in rows] == pytest.approx([10.0, 11.0, 12.5])
    # by hand: T1 / Tp = 10/10, 10/11, 10/12.5; the same as X_p / (p * X_1) when the per-rank batch is fixed
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.909090909, 0.8])
    assert [r["efficiency"] for r in rows] == pytest.approx([r["samples_per_sec"] / (r["ranks"] * 3200.0)
                                                             for r in rows])
    assert rows[2]["speedup"] == pytest.approx(3.2)
    assert rows[1]["breakdown_ms"] == BREAKDOWN


# Weak, 3 repeats per rank count: at 2 ranks every run clearly slower than at 1; at 4 ranks as fast as at 1
# but noisy. The intervals must say behind (below ideal) and tie (ideal cannot be ruled out).
REPEATED = [record("weak", p, t, 32) for p, ts in ((1, (10.0, 10.4, 9.7)), (2, (12.0, 12.5, 11.8)),
                                                     (4, (8.0, 10.0, 12.5))) for t in ts]


def test_repeated_runs_give_efficiency_intervals_and_verdicts():
    rows = report.efficiency_table(REPEATED, "weak")
    assert rows[0]["efficiency_ci"] is None  # the baseline: 1 by definition
    two, four = rows[1]["efficiency_ci"], rows[2]["efficiency_ci"]
    assert two["verdict"] == "behind" and two["high"] < 1 and two["n"] == 3 and two["method"].startswith("Welch")
    # by hand: the ratio of the geometric means of the step times, T_1 / T_2
    gm = lambda ts: math.exp(sum(map(math.log, ts)) / len(ts))
    assert two["estimate"] == pytest.approx(gm((10.0, 10.4, 9.7)) / gm((12.0, 12.5, 11.8)))
    assert two["low"] < rows[1]["efficiency"] < two["high"]
    assert four["verdict"] == "tie" and four["low"] < 1 < four["high"]


def test_strong_intervals_carry_the_p0_over_p_factor():
    recs = [record("strong", p, t, 64) for p, ts in ((1, (100.0, 102.0)), (2, (55.0, 56.0))) for t in ts]
    (_, two) = report.efficiency_table(recs, "strong")
    ci = two["efficiency_ci"]
    gm = lambda ts: math.exp(sum(map(math.log, ts)) / len(ts))
    assert ci["estimate"] == pytest.approx(gm((100.0, 102.0)) / gm((55.0, 56.0)) / 2)
    assert ci["low"] < two["efficiency"] < ci["high"] and ci["low"] > 0.5  # scaled, not the raw time ratio ~1.8


def test_report_prints_the_intervals_of_repeated_runs(tmp_path):
    pytest.importorskip("matplotlib")
    text = report.write_report(write_jsonl(tmp_path / "r.jsonl", REPEATED), tmp_path / "out").read_text()
    ci = report.efficiency_table(REPEATED, "weak")[1]["efficiency_ci"]
    assert f"| {ci['low']:.1%}–{ci['high']:.1%} | behind |" in text.split("| 2 | 3 |")[1].splitlines()[0]
    assert "No interval" not in text and "Welch's t-interval of the efficiency" in text


def test_without_a_one_rank_run_the_smallest_is_the_baseline():
    rows = report.efficiency_table(STRONG[1:], "strong")
    assert rows[0]["baseline_ranks"] == 2
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 2 * 2000 / (4 * 1200)])


def test_a_study_must_hold_its_batch_fixed():
    mixed = WEAK + [record("weak", 8, 13.0, 64)]
    with pytest.raises(ScalingError, match="batch_size: the weak-scaling runs use 32, 64"):
        report.efficiency_table(mixed, "weak")
    with pytest.raises(ScalingError, match="no strong-scaling records"):
        report.efficiency_table(WEAK, "strong")


@pytest.mark.parametrize("p", [2, 8])
def test_fit_recovers_alpha_beta_from_exact_timings(p):
    bench = synthetic_allreduce(20e-6, 1e-9, p)
    bench["results"].append({"bytes": 4096, "impl": "mpi", "time_s": 1.0})  # another impl: ignored
    alpha, beta = comm_model.fit_alpha_beta(bench["results"], p)
    assert alpha == pytest.approx(20e-6, rel=1e-6)
    assert beta == pytest.approx(1e-9, rel=1e-6)


def test_fit_guards():
    results = synthetic_allreduce(20e-6, 1e-9, 2)["results"]
    with pytest.raises(ModelError, match=">= 2 ranks"):
        comm_model.fit_alpha_beta(results, 1)
    with pytest.raises(ModelError, match="1 message size"):
        comm_model.fit_alpha_beta(results[:1], 2)
    with pytest.raises(ModelError, match="impls present: horovod"):
        comm_model.fit_alpha_beta(results, 2, impl="mpi")


def test_predicted_efficiency_by_hand():
    alpha, beta = comm_model.link_alpha_beta()  # documented defaults: 100 Gb/s, 5 us
    assert (alpha, beta) == pytest.approx((5e-6, 8 / 100e9))
    rows = comm_model.predict_efficiency(alpha, beta, model_bytes=1e8, compute_s=0.1, ranks=[1, 2, 8])
    # p=2: 2*1*5e-6 + 2*1/2 * 1e8 * 8e-11 = 1e-5 + 8e-3;  p=8: 2*7*5e-6 + 2*7/8 * 1e8 * 8e-11 = 7e-5 + 0.014
    assert [r["comm_s"] for r in rows] == pytest.approx([0.0, 0.00801, 0.01407])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.1 / 0.10801, 0.1 / 0.11407])
    assert [r["ranks"] for r in comm_model.predict_efficiency(alpha, beta, 1e8, 0.1)] == [
        8, 16, 32, 64, 128, 256, 512, 1024]


def test_write_report(tmp_path):
    pytest.importorskip("matplotlib")
    records = write_jsonl(tmp_path / "records.jsonl", STRONG + WEAK)
    bench = tmp_path / "allreduce.json"
    bench.write_text(json.dumps(synthetic_allreduce(20e-6, 1e-9, 2)))
    out = tmp_path / "out"
    path = report.write_report(records, out, ModelInputs(allreduce=bench))
    assert path == out / "report.md"
    text = path.read_text()
    assert "| ranks | runs | samples/s | speedup | efficiency | 95% CI | verdict | step ms |" in text
    # one run at the baseline: no interval, and the report says why
    assert "| 1 | 1 | 100.0 | 1.00 | 100.0% | – | baseline | 3,600.0 |" in text
    assert "| 2 | 3 | 180.0 | 1.80 | 90.0% | – | - | 2,000.0 |" in text
    assert "| 4 | 1 | 300.0 | 3.00 | 75.0% | – | - | 1,200.0 |" in text
    assert "| 4 | 1 | 10,240.0 | 3.20 | 80.0% | – | - | 12.5 | 1.0 | 6.0 | 2.0 | 0.5 |" in text
    assert "**No interval** (–) where the baseline or that rank count has a single run" in text
    assert "allreduce_wait ms" in text and "hpctrain scaling run --mode weak" in text and "node01" in text
    assert "- intra-op threads per rank: 2 at 1 rank, 1 at 2 ranks, 1 at 4 ranks\n" in text
    assert "## Communication model (a model, not a measurement)" in text
    assert "α (latency per ring step) = 20.00 µs" in text
    assert report.PUBLISHED in text
    # the model at 512 ranks for (b), by hand: 100 MB fp32 gradients, 10 ms compute (the weak 1-rank step)
    comm = 2 * 511 * 5e-6 + 2 * 511 / 512 * 1e8 * 8e-11
    assert f"{0.010 / (0.010 + comm):.1%} |" in text.split("| 512 |")[1].splitlines()[0]
    for mode in ("strong", "weak"):
        for kind in ("throughput", "efficiency"):
            assert f"]({kind}-{mode}.png)" in text
            assert (out / f"{kind}-{mode}.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "throughput-strong.png", "efficiency-strong.png", "throughput-weak.png",
         "efficiency-weak.png"])  # no temporary files left behind


def test_report_without_allreduce_has_no_model_and_fp16_halves_model_bytes(tmp_path):
    pytest.importorskip("matplotlib")
    records = write_jsonl(tmp_path / "records.jsonl", WEAK)
    text = report.write_report(records, tmp_path / "out").read_text()
    assert "a model, not a measurement" not in text and "strong" not in text.lower().split("made by")[1]
    fp16 = write_jsonl(tmp_path / "fp16.jsonl", [dict(r, compression="fp16") for r in WEAK])
    bench = tmp_path / "allreduce.json"
    bench.write_text(json.dumps(synthetic_allreduce(20e-6, 1e-9, 2)))
    text = report.write_report(fp16, tmp_path / "out16", ModelInputs(allreduce=bench)).read_text()
    assert "25,000,000 parameters × 2 bytes, fp16 gradients" in text


def test_an_error_leaves_the_previous_report_untouched(tmp_path):
    pytest.importorskip("matplotlib")
    records = write_jsonl(tmp_path / "records.jsonl", WEAK)
    out = tmp_path / "out"
    before = report.write_report(records, out).read_bytes()
    bad = tmp_path / "allreduce.json"
    bad.write_text(json.dumps({"world_size": 1, "results": []}))
    with pytest.raises(ScalingError, match=f"{bad}: world_size: 1"):
        report.write_report(records, out, ModelInputs(allreduce=bad))
    assert (out / "report.md").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("line, fragment", [
    ("{not json", ":2: not valid JSON"),
    ('["a list"]', ":2: expected a JSON object"),
    (json.dumps(record("wek", 2, 11.0, 32)), ":2: mode: 'wek' is not one of"),
    (json.dumps(record("weak", 2, 11.0, 32, world_size=0)), ":2: world_size: expected a positive integer, got 0"),
    (json.dumps({k: v for k, v in record("weak", 2, 11.0, 32).items() if k != "samples_per_sec"}),
     ":2: samples_per_sec: missing"),
    (json.dumps(record("weak", 2, 11.0, 32, step_time_ms={"mean": 11.0})), ":2: step_time_ms: expected"),
    (json.dumps(record("weak", 2, 11.0, 32, breakdown_ms={"data": "slow"})), ":2: breakdown_ms: expected"),
    (json.dumps(record("weak", 2, 11.0, 32, threads_per_rank=0)), ":2: threads_per_rank: expected a positive"),
])
def test_malformed_record_names_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(WEAK[0]) + "\n" + line + "\n")
    with pytest.raises(UserError) as err:
        report.load_records(path)
    assert str(err.value).startswith(f"{path}:2: ") and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_empty_and_mixed_records_files(tmp_path):
    with pytest.raises(ScalingError, match="records file not found"):
        report.load_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ScalingError, match="no records"):
        report.load_records(tmp_path / "empty.jsonl")
    mixed = write_jsonl(tmp_path / "mixed.jsonl", WEAK + [record("weak", 8, 13.0, 32, model="cnn")])
    with pytest.raises(ScalingError, match="model: the records mix 'mlp', 'cnn'"):
        report.load_records(mixed)
    assert math.isclose(report.load_records(write_jsonl(tmp_path / "ok.jsonl", WEAK))[1]["step_time_ms"]["max"], 11.0)


def _drawn_labels(axis):
    """The tick labels a reader sees on ``axis`` of a laid-out figure (inside the view, non-empty)."""
    axis.figure.draw_without_rendering()
    lo, hi = sorted(axis.get_view_interval())
    return [t.get_text() for t in axis.get_ticklabels(which="both")
            if t.get_text() and lo <= (t.get_position()[1] if axis.axis_name == "y" else t.get_position()[0]) <= hi]


@pytest.mark.parametrize("throughputs, labels", [
    # 20k..250k (ideal to 320k): matplotlib alone labels 100,000 and nothing above it
    ((20_000, 38_000, 72_000, 130_000, 250_000), ["20k", "50k", "100k", "200k"]),
    ((150_000, 290_000, 560_000), ["200k", "300k", "400k", "500k", "600k"]),
    # 1 to 1024 ranks, three decades: every decade labelled, nothing between
    ((1_000, 1_900, 3_600, 7_000, 13_000, 25_000, 48_000, 90_000, 170_000, 320_000, 600_000),
     ["1k", "10k", "100k", "1M"]),
])
def test_throughput_axis_labels_every_decade_and_reads_above_100000(throughputs, labels):
    pytest.importorskip("matplotlib")
    rows = [{"ranks": 2**i, "samples_per_sec": x, "efficiency": 0.9} for i, x in enumerate(throughputs)]
    ax = report.throughput_figure("weak", rows).axes[0]
    assert ax.get_yscale() == "log"
    assert _drawn_labels(ax.yaxis) == labels


def test_made_by_commands_are_shell_quoted_so_they_can_be_pasted(tmp_path):
    pytest.importorskip("matplotlib")
    import shlex

    from hpctrain.scaling import run

    cmd = ["mpirun", "-np", "2", "/opt/my tools/hpctrain", "train", "run.dir=/tmp/it's here",
           'model.name="mlp"', "train.batch_size=32"]
    summary = {k: v for k, v in WEAK[0].items() if k not in ("mode", "host", "command", "time")}
    rec = run.record("weak", summary, cmd)
    assert shlex.split(rec["command"]) == cmd
    text = report.write_report(write_jsonl(tmp_path / "records.jsonl", [rec]), tmp_path / "out").read_text()
    made_by = text.split("Made by:")[1].split("```")[1].strip()
    assert shlex.split(made_by) == cmd


# ------------------------------------------------------------------------------------------ two-level model

INTRA, INTER = Level(2e-6, 8 / 2400e9), Level(5e-6, 8 / 200e9)  # NVLink-like within, 200 Gb/s between


def test_two_level_times_by_hand():
    n = 1e8
    # 4 nodes x 8: a flat ring's 62 steps each move n/32 bytes; its between-node edges set the pace
    flat = 2 * 31 * max(2e-6 + n / 32 * 8 / 2400e9, 5e-6 + n / 32 * 8 / 200e9)
    assert comm_model.flat_ring_s(n, 4, 8, INTRA, INTER) == pytest.approx(flat)
    # hierarchical: 2*7 steps of n/8 within the node, then 2*3 steps of n/4 through each node's link
    hier = 2 * 7 * (2e-6 + n / 8 * 8 / 2400e9) + 2 * 3 * (5e-6 + n / 4 * 8 / 200e9)
    assert comm_model.hierarchical_s(n, 4, 8, INTRA, INTER) == pytest.approx(hier)
    assert hier < flat  # 20 latencies against 62, and less through the slow link


@pytest.mark.parametrize("nodes, per_node, level", [(1, 8, INTRA), (4, 1, INTER)])
def test_with_one_level_both_rings_are_the_one_level_ring(nodes, per_node, level):
    """The control: with every rank on one node, or one rank a node, there is only one kind of link, and both
    algorithms reduce to the flat ring of the one-level model on it."""
    p, n = nodes * per_node, 1e8
    one_level = comm_model.predict_efficiency(level.alpha, level.beta, n, 0.1, ranks=[p])[0]["comm_s"]
    assert comm_model.flat_ring_s(n, nodes, per_node, INTRA, INTER) == pytest.approx(one_level)
    assert comm_model.hierarchical_s(n, nodes, per_node, INTRA, INTER) == pytest.approx(one_level)


def test_two_level_prediction_rows_and_guards():
    rows = comm_model.predict_two_level(INTRA, INTER, 1e8, 0.1, per_node=8, ranks=[8, 16])
    assert [(r["ranks"], r["nodes"]) for r in rows] == [(8, 1), (16, 2)]
    assert rows[0]["flat_s"] == pytest.approx(rows[0]["hierarchical_s"])  # one node: the same ring
    assert rows[1]["hierarchical_efficiency"] == pytest.approx(0.1 / (0.1 + rows[1]["hierarchical_s"]))
    with pytest.raises(ModelError, match="ranks: 12 is not a multiple of 8"):
        comm_model.predict_two_level(INTRA, INTER, 1e8, 0.1, per_node=8, ranks=[12])
    with pytest.raises(ModelError, match="gpus_per_node"):
        comm_model.predict_two_level(INTRA, INTER, 1e8, 0.1, per_node=0)


def test_each_level_is_fitted_only_from_a_run_placed_for_it():
    bench = synthetic_allreduce(20e-6, 1e-9, 2)
    assert Level(*comm_model.fit_alpha_beta(bench["results"], 2)) == Level(pytest.approx(20e-6), pytest.approx(1e-9))
    comm_model.check_placement(bench, "intra")  # no hosts: the result predates the field, one machine
    comm_model.check_placement({**bench, "hosts": {"n1": 2}}, "intra")
    with pytest.raises(ModelError, match="ran on 2 hosts; the within-node fit needs a run on one node"):
        comm_model.check_placement({**bench, "hosts": {"n1": 1, "n2": 1}}, "intra")
    comm_model.check_placement({**bench, "hosts": {"n1": 1, "n2": 1}}, "inter")
    for hosts in (None, {"n1": 2}, {"n1": 2, "n2": 2}):
        with pytest.raises(ModelError, match="the between-node fit needs one rank on each of two or more nodes"):
            comm_model.check_placement({**bench, "hosts": hosts}, "inter")


# Weak scaling on two nodes: 2 ranks on one node (11.0, 11.2 ms) and on two (13.0, 13.4 ms), 4 on two.
SPREAD = [record("weak", p, t, 32, nodes=n, ranks_per_node=p // n, hosts={f"n{i + 1}": p // n for i in range(n)},
                 breakdown_ms={**BREAKDOWN, "allreduce_wait": w})
          for p, n, t, w in ((1, 1, 10.0, 0.0), (1, 1, 10.2, 0.0), (2, 1, 11.0, 1.0), (2, 1, 11.2, 1.2),
                             (2, 2, 13.0, 3.0), (2, 2, 13.4, 3.2), (4, 2, 14.0, 4.0))]


def test_a_study_over_nodes_separates_the_cost_between_nodes(tmp_path):
    rows = report.efficiency_table(SPREAD, "weak")
    assert [(r["ranks"], r["nodes"], r["runs"]) for r in rows] == [(1, 1, 2), (2, 1, 2), (2, 2, 2), (4, 2, 1)]
    placed = report.placement_table(rows)
    assert [(r["ranks"], r["nodes"]) for r in placed] == [(2, 2)]  # 4 ranks never ran on one node
    (p2,) = placed
    assert p2["speed"] == pytest.approx(11.1 / 13.2)
    assert p2["ci"]["verdict"] == "behind" and p2["ci"]["high"] < 1
    assert (p2["allreduce_wait_ms"], p2["one_node_allreduce_wait_ms"]) == pytest.approx((3.1, 1.1))

    pytest.importorskip("matplotlib")
    text = report.write_report(write_jsonl(tmp_path / "r.jsonl", SPREAD), tmp_path / "out").read_text()
    assert "| ranks | nodes | runs | samples/s |" in text
    assert "| 2 | 2 | 2 | " in text and "- nodes the ranks ran on: `n1`, `n2`" in text
    assert "### Weak scaling: within a node and between nodes" in text
    assert "| 2 | 2 | 13.2 | 11.1 | 0.84x | " in text and " | behind | 3.1 | 1.1 |" in text


def test_a_study_on_one_node_has_no_nodes_column():
    """The control for the test above: the same records without nodes give the one-node table."""
    rows = report.efficiency_table([r for r in SPREAD if r["nodes"] == 1], "weak")
    assert report.placement_table(rows) == []
    assert all(r["nodes"] == 1 for r in rows)


def test_report_with_both_levels_predicts_flat_and_hierarchical(tmp_path):
    pytest.importorskip("matplotlib")
    records = write_jsonl(tmp_path / "r.jsonl", SPREAD)
    intra, inter = tmp_path / "intra.json", tmp_path / "inter.json"
    intra.write_text(json.dumps({**synthetic_allreduce(20e-6, 1e-9, 2), "hosts": {"n1": 2}}))
    inter.write_text(json.dumps({**synthetic_allreduce(80e-6, 4e-9, 2), "hosts": {"n1": 1, "n2": 1}}))
    inputs = ModelInputs(allreduce=intra, allreduce_inter=inter, link_gbps=200)
    text = report.write_report(records, tmp_path / "out", inputs).read_text()
    assert "## Two-level communication model (a model, not a measurement)" in text
    assert "α = 20.00 µs, β = 1.00 GB/s" in text and "α = 80.00 µs, β = 0.25 GB/s per node" in text
    # 16 ranks = 2 nodes x 8, stated links, 25M fp32 parameters and the 10.1 ms 1-rank step, by hand
    n, compute = 25_000_000 * 4, 0.0101
    flat = 2 * 15 * max(2e-6 + n / 16 * 8 / 2400e9, 5e-6 + n / 16 * 8 / 200e9)
    hier = 2 * 7 * (2e-6 + n / 8 * 8 / 2400e9) + 2 * 1 * (5e-6 + n / 2 * 8 / 200e9)
    row = text.split("\n| 16 | 2 | ")[1].splitlines()[0].split(" | ")
    assert row[2:6] == [f"{flat * 1000:,.2f}", f"{compute / (compute + flat):.1%}", f"{hier * 1000:,.2f}",
                        f"{compute / (compute + hier):.1%} |"]
    with pytest.raises(ScalingError, match=f"{intra}: hosts: .*the between-node fit needs one rank on each"):
        report.write_report(records, tmp_path / "bad", ModelInputs(allreduce=intra, allreduce_inter=intra))
    with pytest.raises(ScalingError, match="--allreduce-inter: the two-level model also needs --allreduce"):
        report.write_report(records, tmp_path / "bad", ModelInputs(allreduce_inter=inter))
    assert not (tmp_path / "bad").exists()


def test_a_misplaced_level_fails_before_any_fit_can_warn(tmp_path, caplog):
    """A wrong --allreduce-inter is one line: the placements are checked before the intra fit, whose
    negative latency on noisy small messages would otherwise log a warning first (as CI once saw)."""
    records = write_jsonl(tmp_path / "r.jsonl", SPREAD)
    noisy = tmp_path / "noisy.json"
    noisy.write_text(json.dumps({**synthetic_allreduce(-2e-7, 1e-9, 2), "hosts": {"n1": 2}}))
    with caplog.at_level(logging.WARNING, logger="hpctrain"):
        with pytest.raises(ScalingError, match=f"{noisy}: hosts: .*the between-node fit needs one rank"):
            report.write_report(records, tmp_path / "bad", ModelInputs(allreduce=noisy, allreduce_inter=noisy))
    assert caplog.records == []
    # the control: the same noisy file as the one level does warn, so the check above could fail
    with caplog.at_level(logging.WARNING, logger="hpctrain"):
        comm_model.fit_alpha_beta(json.loads(noisy.read_text())["results"], 2)
    assert "latency" in caplog.text and "< 0" in caplog.text
