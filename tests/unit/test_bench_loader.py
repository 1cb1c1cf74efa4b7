"""`hpctrain bench loader` on a small real HDF5 dataset: the three readers timed in interleaved repeats, and
each ratio's paired interval and verdict (figures themselves are not asserted: the machine is shared)."""

import pytest

from hpctrain import intervals
from hpctrain.bench import loader


def test_a_small_run_gives_each_ratio_an_interval_over_its_repeats():
    results = loader.run(None, samples=1200, shards=2, batch=64, window=256, repeats=3, naive_samples=300,
                         cold=False, epochs=1)
    warm = results["warm"]
    for peer in ("raw", "naive"):
        ci = warm[f"hpctrain_vs_{peer}_ci"]
        per_repeat = [a / b for a, b in zip(warm["all_runs"]["hpctrain"], warm["all_runs"][peer], strict=True)]
        assert ci["n"] == 3 and ci["low"] <= ci["estimate"] <= ci["high"]
        assert ci["estimate"] == pytest.approx(intervals.ratio_interval(per_repeat).estimate)
        assert ci["verdict"] == intervals.verdict(ci["low"], ci["high"])
    text = loader.report(results)
    raw = warm["hpctrain_vs_raw_ci"]
    assert f"hpctrain/raw = {warm['hpctrain_vs_raw']:.2f}x [{raw['low']:.2f}-{raw['high']:.2f}] {raw['verdict']}" \
        in text and "cold" not in text


def test_one_repeat_says_it_has_no_interval():
    results = loader.run(None, samples=600, shards=1, batch=64, window=128, repeats=1, naive_samples=100,
                         cold=False, epochs=1)
    assert results["warm"]["hpctrain_vs_naive_ci"]["low"] is None
    assert "x [-] -" in loader.report(results)
