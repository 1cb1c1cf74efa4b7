"""The benchmarks' intervals and verdicts (hpctrain/intervals.py), on recorded rounds whose answer is known,
checked against textbook arithmetic (t quantiles from a printed table, not from scipy) and by simulation."""

import math
import statistics

import numpy as np
import pytest

from hpctrain import intervals

# Recorded per-round ratios hpctrain/peer from this machine (the runs named beside each).
ISSUE_CNN_2 = [0.43, 0.82, 0.87, 0.80, 1.03]  # issue 20: CNN, 2 ranks, vs raw Horovod: five rounds either side
USER_API_CNN_2 = [0.8978, 0.884, 0.9522, 0.8909, 0.9209]  # compare-user.json: api vs horovod, CNN, 2 ranks
MLP_DDP_1 = [1.6235, 1.4026, 1.5146, 1.462, 1.5402, 1.5048, 1.5511]  # compare.json: MLP vs DDP, 1 rank
MLP_HVD_2 = [0.9947, 1.0258, 0.9943, 1.0053, 1.0097, 1.0147, 1.0086]  # compare.json: MLP vs Horovod, 2 ranks
T_975 = {4: 2.776, 6: 2.447, 9: 2.262}  # Student's t, two-sided 95%, from a printed table


def by_hand(ratios):
    """The interval the module docstring defines, in plain arithmetic with the table's t."""
    logs = [math.log(r) for r in ratios]
    m, s = statistics.mean(logs), statistics.stdev(logs)
    reach = T_975[len(logs) - 1] * s / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - reach), math.exp(m + reach)


@pytest.mark.parametrize("ratios, expected", [
    (ISSUE_CNN_2, "tie"),  # "neither '14% slower' nor 'as fast' is established": the interval says so
    (MLP_HVD_2, "tie"),  # 1.008 median, but its interval 0.997-1.018 covers 1
    (USER_API_CNN_2, "behind"),  # every round below 1, tightly: 0.875-0.944
    (MLP_DDP_1, "ahead"),
])
def test_recorded_rounds_get_the_verdict_their_spread_allows(ratios, expected):
    ci = intervals.ratio_interval(ratios)
    estimate, low, high = by_hand(ratios)
    assert ci.estimate == pytest.approx(estimate, rel=1e-9)
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=2e-3)  # the table's t has 4 digits
    assert ci.verdict == expected and ci.n == len(ratios)


def test_issue_cnn_rounds_interval_spans_both_readings():
    ci = intervals.ratio_interval(ISSUE_CNN_2)
    assert ci.low < 0.86 and ci.high > 1.0  # both "14% slower" and "as fast" lie inside it
    assert ci.text() == f"{ci.low:.2f}-{ci.high:.2f}" and 0.49 < ci.low < 0.51 and 1.14 < ci.high < 1.16


def test_swapping_the_sides_inverts_the_interval_and_the_verdict():
    ci = intervals.ratio_interval(USER_API_CNN_2)
    flipped = intervals.ratio_interval([1 / r for r in USER_API_CNN_2])
    assert flipped.verdict == "ahead" and ci.verdict == "behind"
    assert (flipped.low, flipped.high) == pytest.approx((1 / ci.high, 1 / ci.low))
    # a cost (CPU seconds per sample): lower is better, so the same interval reads the other way
    assert intervals.ratio_interval(USER_API_CNN_2, higher_is_better=False).verdict == "ahead"


def test_pairing_cancels_drift_between_rounds_that_an_unpaired_comparison_cannot():
    """Control: the machine gets faster round after round (load drifting off) while ours is 3% ahead in
    every round. Paired, the drift cancels: ahead. The same numbers unpaired: drift swamps 3%: tie."""
    peer = [1000.0 * 1.08 ** i for i in range(6)]
    ours = [p * 1.03 * (1.004 if i % 2 else 0.996) for i, p in enumerate(peer)]
    assert intervals.paired_ratio(ours, peer).verdict == "ahead"
    unpaired = intervals.unpaired_ratio(ours, peer)
    assert unpaired.verdict == "tie" and unpaired.estimate == pytest.approx(1.03, rel=0.01)


def test_welch_interval_matches_the_textbook_formula():
    a, b = [10.0, 12.0, 11.0, 13.0], [20.0, 19.0, 22.0]
    ci = intervals.unpaired_ratio(a, b)
    la, lb = np.log(a), np.log(b)
    va, vb = la.var(ddof=1) / 4, lb.var(ddof=1) / 3
    dof = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert 4.0 < dof < 5.0  # between the table's rows: bracket the interval by them
    d = la.mean() - lb.mean()
    inner = (math.exp(d - 2.571 * math.sqrt(va + vb)), math.exp(d + 2.571 * math.sqrt(va + vb)))  # t(5)
    outer = (math.exp(d - 2.776 * math.sqrt(va + vb)), math.exp(d + 2.776 * math.sqrt(va + vb)))  # t(4)
    assert outer[0] < ci.low < inner[0] and inner[1] < ci.high < outer[1]
    assert ci.verdict == "behind" and ci.method.startswith("Welch")


def coverage(true_ratio, rounds, sd, confidence=intervals.CONFIDENCE, trials=2000, seed=0):
    """Share of simulated experiments whose interval covers ``true_ratio``, and their verdicts."""
    rng = np.random.default_rng(seed)
    covered, verdicts = 0, []
    for _ in range(trials):
        drift = rng.normal(0, 0.2, rounds)  # the machine's load, shared by both runs of a round
        peer = np.exp(7 + drift + rng.normal(0, sd, rounds))
        ours = np.exp(7 + math.log(true_ratio) + drift + rng.normal(0, sd, rounds))
        ci = intervals.paired_ratio(ours, peer, confidence=confidence)
        covered += ci.low <= true_ratio <= ci.high
        verdicts.append(ci.verdict)
    return covered / trials, verdicts


def test_intervals_cover_the_true_ratio_as_often_as_they_claim():
    share, verdicts = coverage(1.0, rounds=5, sd=0.08)
    assert 0.935 <= share <= 0.965, share  # 95% +- 3 binomial standard errors over 2000 trials
    assert verdicts.count("tie") / len(verdicts) == pytest.approx(share)  # true ratio 1: covered = tie
    # control: a 68% interval claimed as 95% fails the same check, so the check can fail
    narrow, _ = coverage(1.0, rounds=5, sd=0.08, confidence=0.68)
    assert not 0.935 <= narrow <= 0.965 and narrow == pytest.approx(0.68, abs=0.04)


def test_a_real_five_percent_lead_is_found_with_enough_rounds():
    # each run's own noise 2% (the shared drift cancels in the pairs): power ~0.999 at 10 rounds
    _, verdicts = coverage(1.05, rounds=10, sd=0.02, trials=500)
    assert verdicts.count("ahead") / 500 > 0.97 and "behind" not in verdicts
    _, verdicts = coverage(1 / 1.05, rounds=10, sd=0.02, trials=500)
    assert verdicts.count("behind") / 500 > 0.97
    _, verdicts = coverage(1.05, rounds=3, sd=0.08, trials=500)  # control: too few, too noisy rounds
    assert verdicts.count("tie") / 500 > 0.5


def test_one_round_gives_no_interval_and_no_verdict():
    ci = intervals.ratio_interval([0.9])
    assert ci.verdict == intervals.NO_VERDICT and math.isnan(ci.low) and ci.half_width == math.inf
    assert ci.as_dict()["low"] is None and ci.text() == "-" and ci.estimate == pytest.approx(0.9)
    wild = intervals.ratio_interval([2.0, 900.0, 30.0])  # rounds that disagree by orders of magnitude
    assert wild.verdict == "tie" and wild.text() == f"{wild.low:.2f}-{wild.high:.2g}" and len(wild.text()) < 14
    assert intervals.unpaired_ratio([1.0], [2.0, 2.1]).verdict == intervals.NO_VERDICT


def test_identical_rounds_give_a_point_interval():
    assert intervals.ratio_interval([1.02, 1.02, 1.02]).verdict == "ahead"
    assert intervals.ratio_interval([1.0, 1.0]).verdict == "tie"
    ci = intervals.ratio_interval([1.1, 0.9, 1.1, 0.9])
    assert ci.half_width == pytest.approx(max(ci.high - ci.estimate, ci.estimate - ci.low))


@pytest.mark.parametrize("ours, peer", [([1.0, 0.0], [1.0, 1.0]), ([1.0, -1.0], [1.0, 1.0]),
                                        ([1.0, float("nan")], [1.0, 1.0]), ([], []), ([1.0, 2.0], [1.0])])
def test_bad_measurements_are_refused(ours, peer):
    with pytest.raises(ValueError):
        intervals.paired_ratio(ours, peer)
