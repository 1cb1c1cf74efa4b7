"""Golden files of rendered batch scripts (as submitit keeps them): a change to the template or to rendering
shows up as a diff to review. Regenerate after an intended change with
``HPCTRAIN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_slurm_golden.py`` and read the diff."""

import os
import re
import sys
from pathlib import Path

import pytest

from hpctrain.slurm import JobOptions, render

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "slurm"
CASES = {
    "cpu-defaults": ([], JobOptions()),
    "gpu-2-nodes": (["optim.lr=0.1", "comm.compression=fp16"],
                    JobOptions(nodes=2, gpus_per_node=4, time="12:00:00", partition="gpu", account="proj-1",
                               signal_grace_s=300, max_restarts=3, job_name="big")),
    "cpu-ntasks-hostile-override": (["train.steps=5", "data.path=my data/it's"], JobOptions(ntasks=8)),
}


def normalised(script: str, tmp: Path) -> str:
    """The script without what differs between machines and runs: the time stamp, paths of this checkout."""
    script = re.sub(r"rendered by hpctrain slurm render at [0-9: -]+\)", "rendered by hpctrain slurm render at "
                    "<time>)", script)
    return script.replace(str(Path(sys.executable).parent), "<bin>").replace(str(tmp), "<cwd>")


@pytest.mark.parametrize("name", list(CASES))
def test_rendered_script_matches_its_golden_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.dir resolves under the working directory
    overrides, job = CASES[name]
    got = normalised(render(None, [*overrides, "run.dir=runs/golden"], job), tmp_path)
    path = GOLDEN / f"{name}.sbatch"
    if os.environ.get("HPCTRAIN_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"{path} missing: run with HPCTRAIN_UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(), f"rendered script differs from {path}: review, then regenerate"


def test_golden_comparison_notices_a_changed_option(tmp_path, monkeypatch):
    """Control: one option changed gives a script that differs from the golden file."""
    monkeypatch.chdir(tmp_path)
    got = normalised(render(None, ["run.dir=runs/golden"], JobOptions(time="02:00:00")), tmp_path)
    assert got != (GOLDEN / "cpu-defaults.sbatch").read_text()
