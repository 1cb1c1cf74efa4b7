"""What the reports' plots share: log axes that a person can read, and smoothing of noisy curves.

Pure functions of their arguments (and of the matplotlib axis they are given), so the tests check the
ticks and curves themselves rather than the pixels of a PNG.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# Tick series tried in turn on a log axis, sparsest first: decades, then 1-2-5, then every integer multiple.
TICK_SERIES = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
MIN_LABELS = 3  # fewer labelled ticks than this and a reader cannot tell how the scale runs
LOG_SCALE_DECADES = 1.5  # a curve spanning more than this many decades is drawn on a log axis


def compact(v: float) -> str:
    """``250000`` -> ``250k``, ``1e6`` -> ``1M``, ``0.05`` -> ``0.05``: short tick labels that never overlap."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:g}{unit}"
    return f"{v:g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """The labelled ticks of a log axis from ``lo`` to ``hi`` (> 0): every decade in view, and the 1-2-5
    or 1-9 series where fewer than :data:`MIN_LABELS` decades fall in view (the densest one if none gives
    enough). Matplotlib's default labels only the decades, and from 20,000 to 250,000 that is 100,000 alone."""
    if not 0 < lo < hi:
        raise ValueError(f"log axis limits must satisfy 0 < lo < hi, got {lo!r}, {hi!r}")
    ticks: list[float] = []
    for subs in TICK_SERIES:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in subs if lo <= m * 10.0 ** e * (1 + 1e-9) and m * 10.0 ** e <= hi * (1 + 1e-9)]
        if len(ticks) >= MIN_LABELS:
            break
    return ticks


def label_log_axis(axis: Any) -> list[str]:
    """Label a log-scale matplotlib axis (``ax.yaxis``) at :func:`log_ticks` of its current view, with
    :func:`compact` labels and unlabelled minor ticks; returns the labels, lowest first. Call it after the
    data is plotted (the view limits come from the data)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    ticks = log_ticks(lo, hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: compact(v)))
    axis.set_minor_locator(LogLocator(base=10, subs=TICK_SERIES[-1][1:], numticks=100))
    axis.set_minor_formatter(NullFormatter())
    return [compact(t) for t in ticks]


def spans_decades(values: Sequence[float], decades: float = LOG_SCALE_DECADES) -> bool:
    """Whether positive ``values`` span more than ``decades`` powers of ten (none may be <= 0)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and math.log10(max(finite) / min(finite)) > decades


def running_median(values: Sequence[float], window: int) -> list[float]:
    """Centred running median (the window shrinks at the ends): one outlier in a window moves it not at all,
    where a mean or an exponential average would carry a loss spike into its neighbours."""
    half = max(0, window // 2)
    return [statistics.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def smoothing_window(n: int) -> int:
    """An odd window of about a tenth of ``n`` points, at least 3 (so one spike is always outvoted)."""
    return max(3, (n // 10) | 1)
