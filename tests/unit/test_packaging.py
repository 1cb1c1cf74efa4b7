"""hpctrain installed from its wheel, away from the source tree, still finds its batch-script templates
(package data) and renders a job; without the template it says so in one line."""

import os
import subprocess
import sys
from pathlib import Path

from tests.launch import REPO

RENDER = ("import hpctrain, sys; from hpctrain.cli import main; "
          "print('HPCTRAIN_AT', hpctrain.__file__, file=sys.stderr); "
          "main(['slurm', 'render', '--ntasks', '2', 'train.steps=5'])")


def test_installed_wheel_renders_sbatch_without_the_source_tree(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("hpctrain-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-c", RENDER], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"HPCTRAIN_AT {site}" in p.stderr  # the installed copy ran, not the repository's
    assert p.stdout.startswith("#!/bin/bash") and "srun --mpi=pmix" in p.stdout and "#SBATCH --ntasks=2" in p.stdout

    # control: the same installation without its template cannot render, and says what to do
    (site / "hpctrain" / "templates" / "train.sbatch").unlink()
    p = subprocess.run([sys.executable, "-c", RENDER], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "missing from this hpctrain installation: reinstall it" in p.stderr, p.stderr
    assert Path(REPO, "slurm", "train.sbatch").exists()
