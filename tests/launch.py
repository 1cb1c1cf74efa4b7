"""Start real hpctrain processes for the tests: plain, under mpirun, under horovodrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpctrain.launchers import mpirun_command

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv running pytest has hpctrain, horovodrun, torchrun
HPCTRAIN = str(BIN / "hpctrain")
# Overrides for runs that test something else: the end-of-run report (matplotlib) and TensorBoard cost about
# a second per run, and they have their own test (tests/mpi/test_techniques.py). Use it, not the two literals.
QUIET = ["run.report=false", "run.tensorboard=false"]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM_WORLD", "HOROVOD_", "SLURM_", "PMIX_"))}
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def mpirun(np: int, *args: str) -> list[str]:
    return mpirun_command(np, *args)


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


def file_bytes(*roots: Path, skip: tuple[str, ...] = ()) -> dict[Path, bytes]:
    """Every file under ``roots`` with its bytes, but for the names in ``skip``: to show that a run was left
    byte for byte as it was."""
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def logged_step(run_dir: Path) -> int:
    """The newest step in ``run_dir``'s metrics.jsonl (0 before the first is written)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(ln).get("step", 0) for ln in lines if ln.endswith("}")), default=0)
    except FileNotFoundError:
        return 0


def rank_pid(proc: subprocess.Popen, rank: int) -> int:
    """PID of rank ``rank`` of an mpirun (or horovodrun) job started as ``proc``."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            environ = child.environ()
            if (environ.get("OMPI_COMM_WORLD_RANK") or environ.get("HOROVOD_RANK")) == str(rank) \
                    and "python" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"rank {rank} of {proc.args} not found")
