"""The measurement tools end to end on real ranks: `bench compare` (hpctrain, raw Horovod, DDP via torchrun;
a user's model by import path, and hpctrain through the Python API), `bench memory` (and its PyTorch peers)
and a quick 1-2 rank scaling study followed by its report. Throughput figures are not asserted (timed tests
fail on a busy machine); what is asserted is that every run happened and the arithmetic holds."""

import json

from tests.launch import HPCTRAIN, run


def test_bench_compare_runs_all_three_and_reports_ratios(tmp_path):
    out = tmp_path / "compare.json"
    proc = run([HPCTRAIN, "bench", "compare", "--models", "cnn", "--ranks", "2", "--rounds", "1", "--steps", "12",
                "--json", str(out)], timeout=300)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["ranks"] == 2 and all(row[f"{i}_samples_per_sec"] > 0 for i in ("hpctrain", "horovod", "ddp"))
    assert abs(row["hpctrain_vs_ddp"] - row["hpctrain_samples_per_sec"] / row["ddp_samples_per_sec"]) < 1e-9
    (one_round,) = row["hpctrain_vs_horovod_per_round"]  # one round: its ratio is the ratio of the medians
    assert abs(one_round - row["hpctrain_vs_horovod"]) < 1e-9
    ci = row["hpctrain_vs_ddp_ci"]  # one round: no interval, no verdict, and the table says so
    assert ci["n"] == 1 and ci["low"] is None and ci["verdict"] == "-"
    line = next(ln.split() for ln in proc.stdout.splitlines() if ln.split()[:2] == ["cnn", "2"])
    assert line[5:] == [f"{row['hpctrain_vs_horovod']:.3f}x", "-", "-", f"{row['hpctrain_vs_ddp']:.3f}x", "-", "-"]
    # every implementation measured its CPU per sample, switches and step-time spread the same way
    for impl in ("hpctrain", "horovod", "ddp"):
        (one,) = row["usage"][impl]
        assert one["cpu_s_per_sample"] > 0 and one["involuntary_switches_per_step"] >= 0
        p = one["step_ms_percentiles"]
        assert 0 < p["p10"] <= p["p50"] <= p["p90"]
    assert "vs ddp" in proc.stdout and "CPU ms per sample per rank" in proc.stdout and "machine load" in proc.stdout


def test_bench_compare_one_process_against_a_plain_torch_loop(tmp_path):
    """The one-GPU comparison's form (--launcher direct, no mpirun), here on the CPU with the Transformer."""
    out = tmp_path / "compare.json"
    proc = run([HPCTRAIN, "bench", "compare", "--models", "transformer", "--ranks", "1", "--rounds", "1",
                "--steps", "8", "--batch", "4", "--impls", "hpctrain,torch", "--launcher", "direct",
                "--json", str(out)], timeout=300)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert result["impls"] == ["hpctrain", "torch"] and result["launcher"] == "direct"
    assert "train.batch_size=4" in result["models"]["transformer"]
    assert row["hpctrain_samples_per_sec"] > 0 and row["torch_samples_per_sec"] > 0 and "ddp_samples_per_sec" not in row
    assert abs(row["hpctrain_vs_torch"] - row["hpctrain_samples_per_sec"] / row["torch_samples_per_sec"]) < 1e-9
    assert "vs torch" in proc.stdout and "vs ddp" not in proc.stdout
    bad = run([HPCTRAIN, "bench", "compare", "--impls", "hpctrain,torch", "--ranks", "2"], check=False)
    assert bad.returncode == 2 and "use --ranks 1" in bad.stderr


def test_bench_compare_on_a_users_gpt2_by_config_and_through_the_python_api(tmp_path):
    """Hugging Face's GPT-2 (docs/examples/mymodels.py, output object with .logits) in every implementation
    that launches under mpirun, on 2 ranks; the module reaches every rank through PYTHONPATH. (One rank adds
    nothing this checks and cost three more launches of a model that is slow to import.)"""
    out = tmp_path / "compare.json"
    user = ["--model", "mymodels:gpt2", "--model-args", "vocab_size=128,seq_len=32,width=32,layers=1",
            "--set", "data.sample_shape=[32]", "--set", "data.sample_kind=tokens", "--set", "data.num_classes=128"]
    proc = run([HPCTRAIN, "bench", "compare", *user, "--ranks", "2", "--rounds", "1", "--steps", "10",
                "--batch", "8", "--impls", "hpctrain,api,horovod", "--json", str(out)], timeout=600,
               PYTHONPATH="docs/examples")
    result = json.loads(out.read_text())
    assert result["impls"] == ["hpctrain", "api", "horovod"] and list(result["models"]) == ["mymodels:gpt2"]
    assert {"model.name=mymodels:gpt2", "model.args.width=32", "data.sample_kind=tokens",
            "train.batch_size=8"} <= set(result["models"]["mymodels:gpt2"])
    assert [(r["model"], r["ranks"]) for r in result["rows"]] == [("mymodels:gpt2", 2)]
    for row in result["rows"]:
        assert all(row[f"{i}_samples_per_sec"] > 0 for i in ("hpctrain", "api", "horovod"))
        assert abs(row["api_vs_horovod"] - row["api_samples_per_sec"] / row["horovod_samples_per_sec"]) < 1e-9
        assert abs(row["api_vs_hpctrain"] - row["api_samples_per_sec"] / row["hpctrain_samples_per_sec"]) < 1e-9
        line = next(ln.split() for ln in proc.stdout.splitlines() if ln.split()[:2] == ["mymodels:gpt2",
                                                                                       str(row["ranks"])])
        assert line[2:5] == [f"{row[f'{i}_samples_per_sec']:.1f}" for i in ("hpctrain", "api", "horovod")]
        assert f"{row['api_vs_horovod']:.3f}x" in line
    assert "api vs horovod" in proc.stdout and "vs ddp" not in proc.stdout
    bad = run([HPCTRAIN, "bench", "compare", *user, "--set", "optim.lr=0.1"], check=False, PYTHONPATH="docs/examples")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--set: expected KEY=VALUE" in bad.stderr
    bad = run([HPCTRAIN, "bench", "compare", *user], check=False)  # no PYTHONPATH: said before any rank starts
    assert bad.returncode == 2 and "cannot import module 'mymodels'" in bad.stderr


def test_quick_strong_study_and_report(tmp_path):
    records = tmp_path / "strong.jsonl"
    run([HPCTRAIN, "scaling", "run", "--mode", "strong", "--ranks", "1,2", "--global-batch", "32",
         "--out", str(records), "train.steps=20", "run.log_every=10"], timeout=300)
    recs = [json.loads(ln) for ln in records.read_text().splitlines()]
    assert [(r["world_size"], r["batch_size"], r["global_batch_size"]) for r in recs] == [(1, 32, 32), (2, 16, 32)]
    assert all(set(r["breakdown_ms"]) == {"data", "forward_backward", "allreduce_wait", "optimizer"} for r in recs)
    assert all(r["threads_per_rank"] >= 1 for r in recs)
    assert all(r["cpu_s_per_sample"]["mean"] > 0 and r["step_ms_percentiles"]["p50"] > 0 for r in recs)
    report_dir = tmp_path / "report"
    run([HPCTRAIN, "scaling", "report", str(records), "--out", str(report_dir)])
    text = (report_dir / "report.md").read_text()
    assert f"- intra-op threads per rank: {recs[0]['threads_per_rank']} at 1 rank, " in text
    speedup = recs[1]["samples_per_sec"] / recs[0]["samples_per_sec"]
    row = next(ln for ln in text.splitlines() if ln.startswith("| 2 | 1 |"))
    assert f"| {recs[1]['samples_per_sec']:,.1f} | {speedup:.2f} |" in row, row
    assert (report_dir / "throughput-strong.png").read_bytes().startswith(b"\x89PNG")
    bad = run([HPCTRAIN, "scaling", "run", "--mode", "strong", "--ranks", "3", "--global-batch", "32",
               "--out", str(tmp_path / "x.jsonl")], check=False)
    assert bad.returncode == 2 and "does not divide evenly over 3 ranks" in bad.stderr


def test_bench_memory_searches_a_stage_and_runs_pytorchs_sharded_peers_on_the_same_model(tmp_path):
    """One stage searched (a budget every depth fits, so the search ends at --max-depth after one run) and
    the throughput comparison against DDP + ZeroRedundancyOptimizer and FSDP2 under torchrun: every run
    trained the same model and reported its largest rank's peak memory."""
    out = tmp_path / "memory.json"
    proc = run([HPCTRAIN, "bench", "memory", "--configs", "1", "--budget-mb", "100000", "--max-depth", "2",
                "--width", "32", "--heads", "2", "--seq-len", "16", "--batch", "4", "--steps", "2", "--rounds", "1",
                "--compare-steps", "3", "--out", str(out)], timeout=300)
    result = json.loads(out.read_text())
    (found,) = result["largest"]
    assert (found["stage"], found["recompute"], found["depth"]) == (1, False, 2) and list(found["probes"]) == ["2"]
    params = found["params"]
    formula = result["formula_bytes_per_param"]["1"]
    assert formula == 8 + 8 / 2 and abs(found["formula_mib"] * 2**20 - formula * params) < 1
    assert 0 < found["optimizer_state_mib"] < found["held_mib"] < found["peak_mib"]
    rows = {r["impl"]: r for r in result["compare"]["rows"]}
    assert list(rows) == ["hpctrain z1", "zero", "fsdp"] and result["compare"]["depth"] == 2
    assert all(r["params"] == params and r["peak_mib"] > 100 and r["samples_per_sec"] > 0 for r in rows.values())
    ours = rows["hpctrain z1"]
    assert abs(ours["vs_zero"]["estimate"] - ours["samples_per_sec"] / rows["zero"]["samples_per_sec"]) < 1e-9
    assert "ZeroRedundancyOptimizer" in proc.stdout
    assert out.with_suffix(".txt").read_text().startswith("# hpctrain bench memory --configs 1")
