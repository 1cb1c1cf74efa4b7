"""write_run_report on a hand-written run directory; TensorBoardLog read back with TensorBoard's own reader."""

import json

import pytest

from hpctrain.errors import UserError
from hpctrain.run_report import RunReportError, loss_figure, write_run_report


def _stats(lo, mean, hi):
    return {"min": lo, "mean": mean, "max": hi}


def _write_run(run_dir, metrics_lines=None):
    if metrics_lines is None:
        phases = {"data": 1, "forward_backward": 10, "allreduce_wait": 4, "optimizer": 2}
        records = [
            {"step": 1, "loss": 2.5, "lr": 0.1, "samples_per_sec": 100.0,
             "samples_per_sec_per_rank": _stats(50, 50, 50),
             "step_time_ms": _stats(20, 20, 20), "breakdown_ms": phases, "time": 1.0},
            {"step": 10, "loss": 1.75, "lr": 0.1, "samples_per_sec": 120.0,
             "samples_per_sec_per_rank": _stats(60, 60, 60),
             "step_time_ms": _stats(20, 20, 20), "breakdown_ms": phases, "time": 2.0},
            {"step": 10, "val_loss": 1.9, "val_accuracy": 0.625, "val_samples": 512, "time": 3.0},
            {"step": 20, "loss": 1.25, "lr": 0.05, "samples_per_sec": 125.0,
             "samples_per_sec_per_rank": _stats(62, 62.5, 63), "step_time_ms": _stats(19, 20, 21),
             "breakdown_ms": phases, "time": 4.0},
            {"step": 20, "val_loss": 1.5, "val_accuracy": 0.75, "val_samples": 512, "time": 5.0},
        ]
        metrics_lines = [json.dumps(r) for r in records]
    (run_dir / "metrics.jsonl").write_text("\n".join(metrics_lines) + "\n")
    summary = {
        "model": "mlp", "world_size": 2, "steps": 20, "initial_loss": 2.5, "final_loss": 1.25,
        "untimed_steps": 3, "samples_per_sec": 1234.5, "samples_per_sec_per_rank": _stats(610.0, 617.25, 624.5),
        "step_time_ms": _stats(15.0, 16.0, 17.0),
        "breakdown_ms": {"data": 2.0, "forward_backward": 8.0, "allreduce_wait": 4.0, "optimizer": 1.0},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_report_content_and_png(tmp_path):
    _write_run(tmp_path)
    report = write_run_report(tmp_path)
    assert report == tmp_path / "report.md"
    text = report.read_text()
    for expected in ("mlp", "world size: 2 rank(s)", "steps: 20", "initial 2.5000, final 1.2500",
                     "1,234.5 samples/s global", "617.2 mean (min 610.0, max 624.5)",
                     "16.00 ms mean (min 15.00, max 17.00)", "after 3 untimed steps", "![training loss](loss.png)"):
        assert expected in text, expected
    # validation table: one row per evaluation
    assert "| step | val_accuracy | val_loss | val_samples |" in text
    assert "| 10 | 0.6250 | 1.9000 | 512 |" in text
    assert "| 20 | 0.7500 | 1.5000 | 512 |" in text
    # breakdown as ms and % of the 16 ms mean step; "other" is the 1 ms no phase accounts for
    for row in ("| data | 2.00 | 12.5 |", "| forward_backward | 8.00 | 50.0 |", "| allreduce_wait | 4.00 | 25.0 |",
                "| optimizer | 1.00 | 6.2 |", "| other | 1.00 | 6.2 |", "| step (mean) | 16.00 | 100.0 |"):
        assert row in text, row
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl", "report.md", "summary.json"]


def test_report_without_validation(tmp_path):
    _write_run(tmp_path, [json.dumps({"step": 1, "loss": 3.0}), json.dumps({"step": 2, "loss": 2.0})])
    text = write_run_report(tmp_path).read_text()
    assert "## Validation" not in text
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_malformed_metrics_names_the_file(tmp_path):
    _write_run(tmp_path, [json.dumps({"step": 1, "loss": 3.0}), '{"step": 2, "loss": '])
    with pytest.raises(RunReportError, match=r"metrics\.jsonl:2: not valid JSON") as info:
        write_run_report(tmp_path)
    assert isinstance(info.value, UserError)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(("name", "content", "match"), [
    ("metrics.jsonl", None, r"metrics\.jsonl: not found"),
    ("summary.json", None, r"summary\.json: not found"),
    ("summary.json", "[1, 2]", r"summary\.json: expected a JSON object"),
    ("summary.json", "{not json", r"summary\.json: not valid JSON"),
    ("metrics.jsonl", '{"step": 1, "val_loss": 2.0}\n', r"metrics\.jsonl: no training records"),
    ("metrics.jsonl", '{"step": "one", "loss": 2.0}\n', r"metrics\.jsonl:1: step"),
])
def test_bad_files_raise_user_error(tmp_path, name, content, match):
    _write_run(tmp_path)
    if content is None:
        (tmp_path / name).unlink()
    else:
        (tmp_path / name).write_text(content)
    with pytest.raises(RunReportError, match=match):
        write_run_report(tmp_path)


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hpctrain.tboard import TensorBoardLog

    tb = TensorBoardLog(tmp_path / "tb")
    tb.scalars(1, {"step": 1, "loss": 2.5, "lr": 0.1, "samples_per_sec": 100.0, "time": 123.0,
                   "breakdown_ms": {"data": 1.5, "forward_backward": 10.0}})
    tb.scalars(2, {"loss": 2.0, "lr": 0.05, "samples_per_sec": 110.0,
                   "breakdown_ms": {"data": 1.0, "forward_backward": 9.0}})
    tb.scalars(2, {"val_loss": 2.25, "val_accuracy": 0.5, "val_note": "text is skipped"}, prefix="val")
    tb.close()

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"train/loss", "train/lr", "train/samples_per_sec", "train/breakdown_ms/data",
                    "train/breakdown_ms/forward_backward", "val/val_loss", "val/val_accuracy"}

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert series("train/loss") == [(1, 2.5), (2, 2.0)]
    assert series("train/lr") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.05))]
    assert series("train/breakdown_ms/data") == [(1, 1.5), (2, 1.0)]
    assert series("val/val_loss") == [(2, 2.25)]
    assert series("val/val_accuracy") == [(2, 0.5)]


# What `make demo` logs (log_every = 100 of 1200 steps): 13 single-batch losses, one of them a spike.
DEMO_LOSSES = [2.31, 0.92, 0.41, 0.19, 0.088, 0.052, 1.95, 0.031, 0.022, 0.017, 0.013, 0.011, 0.0094]


def _demo_records():
    return [{"step": step, "loss": loss} for step, loss in zip([1, *range(100, 1201, 100)], DEMO_LOSSES, strict=True)]


def test_loss_plot_smooths_the_logged_steps_and_goes_log_scale_over_decades():
    pytest.importorskip("matplotlib")
    ax = loss_figure(_demo_records(), [{"step": 1200, "val_loss": 0.02}]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    raw = lines["training loss (one batch per logged step)"]
    smooth = lines["training loss, running median of 3"]
    assert list(raw.get_ydata()) == DEMO_LOSSES  # every logged point is drawn
    smoothed = list(smooth.get_ydata())
    assert smoothed[6] == 0.052 and max(smoothed[4:]) < 0.1  # the spike at step 600 does not move the curve
    assert smoothed[0] == pytest.approx((2.31 + 0.92) / 2) and smoothed[-1] == pytest.approx((0.011 + 0.0094) / 2)
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss (log scale)"
    ax.figure.draw_without_rendering()
    lo, hi = ax.get_ylim()
    labels = [t.get_text() for t in ax.yaxis.get_ticklabels(which="both")
              if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert labels == ["0.01", "0.1", "1"]


def test_loss_plot_stays_linear_within_a_decade_and_without_smoothing_for_two_points():
    pytest.importorskip("matplotlib")
    ax = loss_figure([{"step": 1, "loss": 2.3}, {"step": 10, "loss": 0.9}], []).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "loss"
    assert [line.get_label() for line in ax.get_lines()] == ["training loss (one batch per logged step)"]
