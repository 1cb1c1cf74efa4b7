"""The end-of-run report: report.md and loss.png, made from a run directory's metrics.jsonl and summary.json.

Reads only the files a run wrote (plotting lives apart from measuring), so it works after the job, on any
machine, without torch or Horovod.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from hpctrain import plots
from hpctrain.errors import UserError
from hpctrain.files import read_jsonl, read_text, write_atomic

MISSING = "not found (is this a run directory?)"

RAW_LABEL = "training loss (one batch per logged step)"

PHASES = ("data", "forward_backward", "allreduce_wait", "optimizer")  # as hpctrain.metrics.PHASES


class RunReportError(UserError):
    """metrics.jsonl or summary.json is missing or malformed; the message names the file."""


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records (with ``loss``) and validation records (with ``val_*`` keys), in file order."""
    train, val = [], []
    for where, record in read_jsonl(path, RunReportError, MISSING):
        if not isinstance(record, dict):
            raise RunReportError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
            raise RunReportError(f"{where}: step: expected an integer, got {record.get('step')!r}")
        if "loss" in record:
            if not _is_number(record["loss"]):
                raise RunReportError(f"{where}: loss: expected a number, got {record['loss']!r}")
            train.append(record)
        elif any(k.startswith("val_") for k in record):
            val.append(record)
    if not train:
        raise RunReportError(f"{path}: no training records (lines with \"step\" and \"loss\")")
    return train, val


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(read_text(path, RunReportError, MISSING))
    except json.JSONDecodeError as e:
        raise RunReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(summary, dict):
        raise RunReportError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    for key in ("samples_per_sec_per_rank", "step_time_ms"):
        stats = summary.get(key)
        if not (isinstance(stats, dict) and all(_is_number(stats.get(s)) for s in ("min", "mean", "max"))):
            raise RunReportError(f"{path}: {key}: expected {{\"min\", \"mean\", \"max\"}} numbers, got {stats!r}")
    breakdown = summary.get("breakdown_ms")
    if not (isinstance(breakdown, dict) and all(_is_number(v) for v in breakdown.values())):
        raise RunReportError(f"{path}: breakdown_ms: expected phase names mapped to milliseconds, got {breakdown!r}")
    if not _is_number(summary.get("samples_per_sec")):
        raise RunReportError(f"{path}: samples_per_sec: expected a number, got {summary.get('samples_per_sec')!r}")
    return summary


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if _is_number(x) else "n/a"


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}"
    return "" if x is None else str(x)


def loss_figure(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> Any:
    """The loss plot as a matplotlib Figure (not yet saved, so its axes can be inspected).

    metrics.jsonl holds one training loss per logged step (``run.log_every``): the loss of that single
    step's batch, noisy, with a spike now and then. Those points are drawn faint, and over them a running
    median of them, which one spike does not move; the y axis is logarithmic when the losses span more
    than ``plots.LOG_SCALE_DECADES`` decades, where a linear one would flatten all but the first steps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # files only: compute nodes have no display
    from matplotlib.figure import Figure  # not pyplot: no global state, freed with the figure

    fig = Figure(figsize=(6, 4.4), layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps, losses = [r["step"] for r in train], [float(r["loss"]) for r in train]
    window = plots.smoothing_window(len(losses))
    if len(losses) >= window:
        ax.plot(steps, losses, ".", color="C0", alpha=0.5, label=RAW_LABEL)
        ax.plot(steps, plots.running_median(losses, window), "-", color="C0",
                label=f"training loss, running median of {window}")
    else:  # too few points to smooth
        ax.plot(steps, losses, ".-", color="C0", label=RAW_LABEL)
    val_points = [(r["step"], float(r["val_loss"])) for r in val if _is_number(r.get("val_loss"))]
    if val_points:
        ax.plot(*zip(*val_points, strict=True), "o", color="C1", label="validation loss")
    if plots.spans_decades(losses + [v for _, v in val_points]):
        ax.set_yscale("log")
        plots.label_log_axis(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(alpha=0.3)
    # below the axes: inside, "best" can still cover a logged point (the spike it is there to show)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small", frameon=False)
    return fig


def _plot_loss(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    loss_figure(train, val).savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _render(summary: dict[str, Any], train: list[dict[str, Any]], val: list[dict[str, Any]], image: str) -> str:
    initial = summary.get("initial_loss", train[0]["loss"])
    final = summary.get("final_loss", train[-1]["loss"])
    steps = summary.get("steps", train[-1]["step"])
    per_rank = summary["samples_per_sec_per_rank"]
    step_ms = summary["step_time_ms"]
    lines = [
        f"# Run report: {summary.get('model', 'n/a')}",
        "",
        f"- model: {summary.get('model', 'n/a')}",
        f"- world size: {summary.get('world_size', 'n/a')} rank(s)",
        f"- steps: {steps}",
        f"- loss: initial {_fmt(initial)}, final {_fmt(final)}",
        f"- throughput: {_fmt(summary['samples_per_sec'], ',.1f')} samples/s global; per rank "
        f"{_fmt(per_rank['mean'], ',.1f')} mean (min {_fmt(per_rank['min'], ',.1f')}, "
        f"max {_fmt(per_rank['max'], ',.1f')})",
        f"- step time: {_fmt(step_ms['mean'], '.2f')} ms mean (min {_fmt(step_ms['min'], '.2f')}, "
        f"max {_fmt(step_ms['max'], '.2f')}), after {_untimed(summary)} untimed steps",
        "",
    ]
    if val:
        keys = sorted({k for r in val for k in r if k.startswith("val_")})
        lines += ["## Validation", "", "| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        for r in val:
            lines.append(f"| {r['step']} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
        lines.append("")
    breakdown = summary["breakdown_ms"]
    names = [p for p in PHASES if p in breakdown] + [p for p in breakdown if p not in PHASES]
    mean = step_ms["mean"]
    rows = [(p, breakdown[p]) for p in names] + [("other", mean - sum(breakdown.values()))]
    lines += ["## Step time breakdown", "", "| phase | ms per step | % of step |", "|---|---:|---:|"]
    for name, ms in rows:
        share = f"{100 * ms / mean:.1f}" if mean > 0 and math.isfinite(mean) else "n/a"
        lines.append(f"| {name} | {ms:.2f} | {share} |")
    lines += [f"| step (mean) | {mean:.2f} | 100.0 |", "",
              "\"other\" is the step time not in any measured phase.", "",
              "## Loss curve", "", f"![training loss]({image})", ""]
    return "\n".join(lines)


def write_run_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/loss.png`` from the run's metrics.jsonl and summary.json.

    Args:
        run_dir: a finished run's directory.

    Returns:
        The path of report.md.

    Raises:
        RunReportError: metrics.jsonl or summary.json is missing or malformed.
    """
    run_dir = Path(run_dir)
    train, val = _read_metrics(run_dir / "metrics.jsonl")
    summary = _read_summary(run_dir / "summary.json")
    write_atomic(run_dir / "loss.png", _plot_loss(train, val))
    report = run_dir / "report.md"
    write_atomic(report, _render(summary, train, val, "loss.png").encode())
    return report


def _untimed(summary: dict[str, Any]) -> Any:
    """Steps left out of the throughput; summaries from before 0.2 call them warmup_steps."""
    return summary.get("untimed_steps", summary.get("warmup_steps", "n/a"))
