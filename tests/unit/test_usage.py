"""The per-rank usage meter (hpctrain/usage.py) that summary.json and the benchmark's peer loops share: CPU
seconds from getrusage (a busy step against a sleeping one as the control), step-time percentiles from the
caller's clock, and the reduction over ranks."""

import time

import numpy as np
import pytest

from hpctrain import usage


def test_cpu_seconds_count_work_not_waiting():
    busy, idle = usage.StepUsage(), usage.StepUsage()
    busy.start(time.perf_counter())
    end = time.process_time() + 0.2
    while time.process_time() < end:  # one step of 0.2 CPU seconds (longer on the clock on a busy machine)
        pass
    busy.step(time.perf_counter())
    busy.finish()
    idle.start(time.perf_counter())
    time.sleep(0.2)  # one step spent waiting, as a rank blocked on a slow peer
    idle.step(time.perf_counter())
    idle.finish()
    cpu_busy, cpu_idle = busy.row()[0], idle.row()[0]
    assert 0.19 < cpu_busy < 0.3 and cpu_idle < 0.05, (cpu_busy, cpu_idle)
    assert idle.row()[2] == pytest.approx(200, abs=50)  # its one step took ~200 ms on the step clock


def test_percentiles_come_from_the_step_clock_and_keep_the_latest_steps():
    u = usage.StepUsage(keep=4)
    u.start(0.0)
    for t in np.cumsum([0.010] * 10 + [0.020, 0.030, 0.040, 0.050]):  # 14 steps; the last 4 are kept
        u.step(float(t))
    u.finish()
    cpu, switches, *pct = u.row()
    assert pct == pytest.approx(np.percentile([20, 30, 40, 50], usage.PERCENTILES))
    assert switches >= 0 and len(u.row()) == usage.COLUMNS


def test_exclude_leaves_a_pause_out_of_the_next_step():
    u = usage.StepUsage()
    u.start(0.0)
    u.step(0.010)
    u.exclude(5.0)  # a validation run between the steps
    u.step(5.020)
    assert u.row()[2:] == pytest.approx([10.0, 10.0, 10.0])


def test_finish_freezes_the_counts_and_an_unstarted_meter_reads_nan():
    u = usage.StepUsage()
    assert all(np.isnan(u.row()))
    u.start(0.0)
    u.step(0.01)
    u.finish()
    first = u.row()[0]
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:
        pass
    u.finish()  # a second call (summary after the last step) does not move the end
    assert u.row()[0] == first


def test_summarise_reduces_ranks():
    table = np.array([[2.0, 100.0, 10.0, 11.0, 12.0], [4.0, 300.0, 9.0, 13.0, 20.0]])
    out = usage.summarise(table, steps=100, batch_size=10)
    assert out["cpu_s_per_sample"] == {"min": 0.002, "mean": 0.003, "max": 0.004}
    assert out["involuntary_switches_per_step"] == {"min": 1.0, "mean": 2.0, "max": 3.0}
    assert out["step_ms_percentiles"] == {"p10": 10.0, "p50": 13.0, "p90": 20.0}  # the slowest rank's each
