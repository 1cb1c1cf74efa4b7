"""docs/compression.md's walk-through, run as committed (scaling_studies/compression_digits.sh, QUICK=1: fewer
steps, shorter timing, and not the wide MLP, whose commands repeat the digits part's): every step exits 0
and the table, JSON and plot are written with one row per model."""

import json
import subprocess

from tests.launch import REPO, env


def test_the_digits_walkthrough_runs_and_writes_its_table_and_plot(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scaling_studies" / "compression_digits.sh"), str(tmp_path)], cwd=REPO,
                          env=env(QUICK="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["label"]: r for r in json.loads((tmp_path / "digits.json").read_text())["variants"]}
    assert len(rows) == 11 and all(r["val_samples"] == 359 for r in rows.values())
    dense = rows["dense"]
    assert dense["val_accuracy"] > 0.8  # 200 steps: a trained model, not a random one (10%)
    assert rows["pruned-90%"]["nonzero_params"] < 0.2 * dense["nonzero_params"]
    assert rows["rows-50%-cut"]["val_correct"] == rows["rows-50%-masked"]["val_correct"]
    assert rows["int8"]["bytes"] < dense["bytes"] / 3 and rows["rows-50%-cut"]["params"] < dense["params"] / 2
    assert "| student-w32-int8 |" in (tmp_path / "digits.md").read_text()
    assert (tmp_path / "accuracy-vs-size.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "wide.json").exists()
