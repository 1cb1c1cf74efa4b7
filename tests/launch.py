"""Start real hpctrain processes for the tests: plain, under mpirun, under horovodrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv running pytest has hpctrain, horovodrun, torchrun
HPCTRAIN = str(BIN / "hpctrain")


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM_WORLD", "HOROVOD_", "SLURM_", "PMIX_"))}
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def mpirun(np: int, *args: str) -> list[str]:
    over = ["--oversubscribe"] if np > (os.cpu_count() or 1) else []
    return ["mpirun", "-np", str(np), *over, *args]


def horovodrun(np: int, *args: str, gloo: bool = False) -> list[str]:
    return [str(BIN / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", *(["--gloo"] if gloo else []),
            *args]


def run(cmd: list[str], timeout: float = 180, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with a hard timeout; on an unexpected exit code, fail with its output."""
    proc = subprocess.run(cmd, cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
