"""Confidence intervals for the benchmarks' ratios, and the verdict they allow.

A ratio of two implementations measured once each on a shared machine moves by 20% or more from run to run;
what can be said is an interval. Every benchmark here runs its contenders interleaved, in rounds, so the
natural unit is the *paired* per-round ratio r_i = ours_i / peer_i: both ran back to back, so drift between
rounds cancels in it. The rounds' ratios are averaged on the log scale (ratios multiply: 0.5x and 2x are
equally far from 1), and the interval is Student's t-interval of that mean, exponentiated:

    m = mean(log r_i),  s = sd(log r_i),  interval = exp(m -+ t_{(1+c)/2, n-1} * s / sqrt(n))

so the estimate is the geometric mean of the per-round ratios. Where the two sides were not measured in
pairs (a scaling study's runs at p0 and at p ranks), :func:`unpaired_ratio` takes Welch's t-interval of the
difference of the two log means instead.

The verdict is read off the interval against 1.0: ``ahead`` when all of it is on the better side of 1,
``behind`` when all of it is on the worse side, ``tie`` when it covers 1 (the measurement cannot tell the
two apart, whatever the point estimate says). One round gives no interval and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
VERDICTS = ("ahead", "behind", "tie")
NO_VERDICT = "-"  # one measurement each: there is no interval to read a verdict from


@dataclass(frozen=True)
class Interval:
    """A ratio with its confidence interval (``low``, ``high``; NaN when ``n`` < 2) and verdict."""

    estimate: float
    low: float
    high: float
    n: int
    verdict: str
    confidence: float = CONFIDENCE
    method: str = "paired t on log ratios"

    @property
    def half_width(self) -> float:
        """How far the interval reaches from the estimate, on its wider side (inf without an interval):
        ``--until-ci W`` stops once every ratio reads estimate +- W or better."""
        if math.isnan(self.low):
            return math.inf
        return max(self.high - self.estimate, self.estimate - self.low)

    def text(self) -> str:
        """``0.98-1.04`` (``-`` without an interval)."""
        return range_text(self.as_dict())

    def scaled(self, factor: float, higher_is_better: bool = True) -> Interval:
        """The interval of ``factor`` x this ratio (a strong-scaling efficiency is p0/p x T_p0/T_p)."""
        low, high = self.low * factor, self.high * factor
        return Interval(self.estimate * factor, low, high, self.n, verdict(low, high, higher_is_better),
                        self.confidence, self.method)

    def as_dict(self) -> dict[str, Any]:
        low, high = (None, None) if math.isnan(self.low) else (self.low, self.high)  # JSON has no NaN
        return {"estimate": self.estimate, "low": low, "high": high, "n": self.n, "verdict": self.verdict,
                "confidence": self.confidence, "method": self.method}


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """``ahead``/``behind``/``tie`` for an interval of ours/theirs (``higher_is_better``: a rate, not a cost)."""
    if math.isnan(low) or math.isnan(high):
        return NO_VERDICT
    if low > 1.0:
        return "ahead" if higher_is_better else "behind"
    if high < 1.0:
        return "behind" if higher_is_better else "ahead"
    return "tie"


def _t_quantile(confidence: float, dof: float) -> float:
    from scipy.stats import t  # imported here: only the benchmarks' summaries need it

    return float(t.ppf(0.5 + confidence / 2, dof))


def _positive(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or not len(a) or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{what}: expected positive finite numbers, got {list(values)!r}")
    return a


def ratio_interval(ratios: Sequence[float], higher_is_better: bool = True,
                   confidence: float = CONFIDENCE) -> Interval:
    """The geometric mean of per-round ratios with its t-interval (see the module docstring)."""
    logs = np.log(_positive(ratios, "ratios"))
    n = len(logs)
    m = float(logs.mean())
    if n < 2:
        return Interval(math.exp(m), math.nan, math.nan, n, NO_VERDICT, confidence)
    reach = _t_quantile(confidence, n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    low, high = math.exp(m - reach), math.exp(m + reach)
    return Interval(math.exp(m), low, high, n, verdict(low, high, higher_is_better), confidence)


def paired_ratio(ours: Sequence[float], peer: Sequence[float], higher_is_better: bool = True,
                 confidence: float = CONFIDENCE) -> Interval:
    """ours/peer from measurements taken in pairs (``ours[i]`` beside ``peer[i]``, one round each)."""
    a, b = _positive(ours, "ours"), _positive(peer, "peer")
    if len(a) != len(b):
        raise ValueError(f"paired measurements: {len(a)} against {len(b)}")
    return ratio_interval(a / b, higher_is_better, confidence)


def unpaired_ratio(ours: Sequence[float], peer: Sequence[float], higher_is_better: bool = True,
                   confidence: float = CONFIDENCE) -> Interval:
    """ratio of the geometric means of two independent samples, with Welch's t-interval on the log scale
    (no interval unless both have at least two values)."""
    a, b = np.log(_positive(ours, "ours")), np.log(_positive(peer, "peer"))
    d = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    method = "Welch t on log values"
    if n < 2:
        return Interval(math.exp(d), math.nan, math.nan, n, NO_VERDICT, confidence, method)
    va, vb = float(a.var(ddof=1)) / len(a), float(b.var(ddof=1)) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        low = high = math.exp(d)
    else:  # Welch-Satterthwaite degrees of freedom
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        reach = _t_quantile(confidence, dof) * se
        low, high = math.exp(d - reach), math.exp(d + reach)
    return Interval(math.exp(d), low, high, n, verdict(low, high, higher_is_better), confidence, method)


def range_text(ci: dict[str, Any]) -> str:
    """``low-high`` of an :meth:`Interval.as_dict` (as read back from a benchmark's JSON), or ``-``."""
    if ci["low"] is None:
        return NO_VERDICT
    return f"{_short(ci['low'])}-{_short(ci['high'])}"


def _short(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.2g}"  # a few rounds that disagree wildly reach far: keep it short


def describe(confidence: float = CONFIDENCE) -> str:
    """The footnote every table prints under its intervals."""
    return (f"{confidence:.0%} CI: t-interval of the geometric mean of the per-round ratios (paired: one "
            f"round's runs ran back to back); verdict ahead/behind when the whole interval is above/below 1, "
            f"tie when it covers 1, {NO_VERDICT} with one round (no interval)")
