"""`hpctrain bench allreduce` on 2 real ranks and on one process: every size x implementation measured,
figures consistent with their definitions, the JSON record complete."""

import json
import statistics
import sys

import pytest

from hpctrain import intervals
from tests.launch import mpirun, run

# The module's own parser and main, as the CLI will wire them; an exception on one rank ends the job
# (as the CLI does) instead of leaving the other rank waiting in a collective until the timeout.
DRIVER = """
import argparse, sys
from hpctrain import dist
from hpctrain.bench import allreduce
p = argparse.ArgumentParser()
allreduce.add_arguments(p)
try:
    code = allreduce.main(p.parse_args(sys.argv[1:]))
except BaseException:
    import traceback
    traceback.print_exc()
    dist.abort_world(1)
    raise
sys.exit(code)
"""
IMPLS = ["horovod", "horovod-fp16", "mpi"]
KEYS = {"bytes", "impl", "time_s", "algbw_GBps", "busbw_GBps", "iters", "round_times_s"}


def bench(tmp_path, ranks: int, *args: str) -> tuple[dict, str]:
    out = tmp_path / "allreduce.json"
    cmd = [sys.executable, "-c", DRIVER, *args, "--json", str(out)]
    proc = run(mpirun(ranks, *cmd) if ranks > 1 else cmd, timeout=120)
    return json.loads(out.read_text()), proc.stdout


def check_record(rec: dict, world: int, sizes: list[int], iters: int | None) -> None:
    assert rec["world_size"] == world and sum(rec["hosts"].values()) == world
    assert rec["memcpy_GBps"] > 0
    assert {"torch", "horovod", "mpi4py", "numpy"} <= set(rec["versions"])
    assert [(r["bytes"], r["impl"]) for r in rec["results"]] == [(s, i) for s in sizes for i in IMPLS]
    for r in rec["results"]:
        assert set(r) == KEYS
        assert r["time_s"] > 0 and r["iters"] >= 3 and (iters is None or r["iters"] == iters)
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (world - 1) / world)
        assert len(r["round_times_s"]) == rec["rounds"] and r["time_s"] == statistics.median(r["round_times_s"])
    by = {(r["bytes"], r["impl"]): r for r in rec["results"]}
    assert [(v["bytes"], v["impl"]) for v in rec["vs_mpi"]] == [(s, i) for s in sizes for i in IMPLS[:2]]
    for v in rec["vs_mpi"]:
        assert v["ratio"] == pytest.approx(by[v["bytes"], v["impl"]]["time_s"] / by[v["bytes"], "mpi"]["time_s"])
        assert v["ci"]["n"] == rec["rounds"] and v["ci"]["verdict"] in (*intervals.VERDICTS, intervals.NO_VERDICT)
        assert (v["ci"]["low"] is None) == (rec["rounds"] == 1)


def test_two_ranks(tmp_path):
    rec, out = bench(tmp_path, 2, "--max-size", "256KB", "--iters", "3")
    check_record(rec, 2, [4 << 10, 16 << 10, 64 << 10, 256 << 10], iters=3)
    assert rec["rounds"] == 3  # the default: each ratio to raw MPI gets an interval
    assert "memcpy (this machine's limit)" in out and "horovod/mpi time" in out and "95% CI" in out
    first = rec["vs_mpi"][0]
    line = next(ln for ln in out.splitlines() if ln.startswith("4KB ") and "x" in ln.split()[1])
    assert line.split()[1:4] == [f"{first['ratio']:.2f}x", intervals.range_text(first["ci"]), first["ci"]["verdict"]]
    assert out.count("256KB   horovod ") == 1  # rank 0 alone prints


def test_two_ranks_adaptive_iterations_agree(tmp_path):
    # rank 0 alone decides when to stop; the other rank must stop after the same call (the run checks it)
    rec, _ = bench(tmp_path, 2, "--max-size", "16KB", "--warmup", "1")
    check_record(rec, 2, [4 << 10, 16 << 10], iters=None)


def test_one_process(tmp_path):
    rec, out = bench(tmp_path, 1, "--min-size", "16KB", "--max-size", "64KB", "--iters", "3", "--rounds", "1")
    check_record(rec, 1, [16 << 10, 64 << 10], iters=3)
    assert "median of 1 interleaved round;" in out  # one round: no interval, and the table says so
    assert all(r["busbw_GBps"] == 0 for r in rec["results"])


def test_a_wrong_sum_ends_the_job_loudly(tmp_path):
    # rank 1's MPI calls write nothing: its check fails while rank 0's passes and goes on to the next
    # collective, so the job must be ended from rank 1, not left waiting
    broken = DRIVER.replace("p = argparse", "if int(__import__('os').environ['OMPI_COMM_WORLD_RANK']) == 1:\n"
                                            "    allreduce.MpiAllreduce.__call__ = lambda self: None\n"
                                            "p = argparse", 1)
    proc = run(mpirun(2, sys.executable, "-c", broken, "--max-size", "4KB", "--iters", "3", "--impl", "mpi"),
               check=False, timeout=60)
    assert proc.returncode != 0
    assert "allreduce mpi of 4KB is wrong: values in [nan, nan], expected 3.0" in proc.stderr
