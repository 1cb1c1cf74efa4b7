"""Fill slurm/train.sbatch from a config and job options, and submit it.

Nothing a user types reaches a shell unquoted: `#SBATCH` values (read by sbatch, not by the shell, and ended
by a newline) must match a strict pattern or are refused; the arguments for ``hpctrain train`` and paths are
written as single-quoted shell words.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpctrain import config as config_mod
from hpctrain.errors import UserError

log = logging.getLogger("hpctrain")
BEGIN, END = "# --- sbatch options", "# --- end of sbatch options ---"

# What each #SBATCH value may contain: enough for real names, times and paths, never a quote, `$`, space or newline.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_PATH = re.compile(r"^[A-Za-z0-9_./%@+=-]{1,4096}$")


class SlurmError(UserError):
    """A job option cannot be used; the message names it."""


@dataclass
class JobOptions:
    nodes: int = 1
    ntasks: int | None = None
    ntasks_per_node: int | None = None
    gpus_per_node: int = 0
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    job_name: str = "hpctrain"
    signal_grace_s: int = 120
    max_restarts: int = 5
    output: str = ""  # default: <run.dir>/logs/%x-%j.out

    def check(self) -> None:
        _require(self.nodes >= 1, "--nodes", "must be >= 1")
        _require(self.ntasks is None or self.ntasks >= 1, "--ntasks", "must be >= 1")
        _require(self.ntasks_per_node is None or self.ntasks_per_node >= 1, "--ntasks-per-node", "must be >= 1")
        _require(self.ntasks is None or self.ntasks_per_node is None, "--ntasks",
                 "give --ntasks or --ntasks-per-node, not both")
        _require(self.gpus_per_node >= 0, "--gpus-per-node", "must be >= 0")
        _require(self.signal_grace_s >= 0, "--signal-grace", "must be >= 0 seconds")
        _require(self.max_restarts >= 0, "--max-restarts", "must be >= 0")
        _require(bool(_TIME.match(self.time)), "--time", f"{self.time!r} is not a Slurm time (e.g. 90, 01:30:00, "
                                                         "2-00:00:00)")
        for flag, value in (("--job-name", self.job_name), ("--partition", self.partition),
                            ("--account", self.account)):
            _require(value == "" or bool(_NAME.match(value)), flag,
                     f"{value!r} may hold only letters, digits and _ . + - (no spaces, quotes or $)")
        _require(self.output == "" or bool(_PATH.match(self.output)), "--output",
                 f"{self.output!r}: use a path of letters, digits and _ . / % @ + = - (no spaces, quotes or $)")


def _require(ok: bool, flag: str, what: str) -> None:
    if not ok:
        raise SlurmError(f"{flag}: {what}")


def sbatch_lines(job: JobOptions, output: str) -> list[str]:
    tasks_per_node = job.ntasks_per_node or (job.gpus_per_node if job.ntasks is None and job.gpus_per_node
                                             else None)
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}"]
    if job.ntasks is not None:
        lines.append(f"--ntasks={job.ntasks}")
    else:
        lines.append(f"--ntasks-per-node={tasks_per_node or 1}")
    if job.gpus_per_node:
        lines.append(f"--gpus-per-node={job.gpus_per_node}")  # one task per GPU: ranks pin cuda:local_rank
    lines += [f"--time={job.time}"]
    if job.partition:
        lines.append(f"--partition={job.partition}")
    if job.account:
        lines.append(f"--account={job.account}")
    lines += [f"--signal=B:USR1@{job.signal_grace_s}", "--requeue", "--open-mode=append", f"--output={output}"]
    return [f"#SBATCH {line}" for line in lines]


def render(config_path: str | None, overrides: list[str], job: JobOptions) -> str:
    """The batch script for this config and job (the config is validated first: a bad key fails here)."""
    job.check()
    cfg = config_mod.load(config_path, overrides)
    run_dir = Path(cfg.run.dir).resolve()
    output = job.output or str(run_dir / "logs" / "%x-%j.out")
    if not _PATH.match(output):
        raise SlurmError(f"run.dir {cfg.run.dir!r} cannot be used in #SBATCH --output (spaces, quotes or $): "
                         "pass --output PATH")
    template = template_path()
    text = template.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not tail:
        raise SlurmError(f"{template}: the '{BEGIN}' ... '{END}' block is missing")
    args = (["--config", str(Path(config_path).resolve())] if config_path else []) + list(overrides)
    block = [f"{BEGIN} (rendered by hpctrain slurm render at {time.strftime('%Y-%m-%d %H:%M:%S')}) ---",
             *sbatch_lines(job, output), END]
    body = re.sub(r"^DEFAULT_ARGS=\(.*\)$", lambda _: "DEFAULT_ARGS=(" + " ".join(map(shlex.quote, args)) + ")",
                  tail, count=1, flags=re.M)
    exe = Path(sys.executable).parent / "hpctrain"  # the hpctrain that rendered the script runs the job
    settings = (f"\nHPCTRAIN_BIN=${{HPCTRAIN_BIN:-{shlex.quote(str(exe))}}}" if exe.exists() else "")
    settings += (f"\nHPCTRAIN_LOG_DIR=${{HPCTRAIN_LOG_DIR:-{shlex.quote(str(run_dir / 'logs'))}}}"
                f"\nHPCTRAIN_MAX_RESTARTS=${{HPCTRAIN_MAX_RESTARTS:-{job.max_restarts}}}")
    body = body.replace("\nset -uo pipefail", settings + "\nset -uo pipefail", 1)
    return head + "\n".join(block) + body


def submit(script: str, run_dir: Path) -> tuple[str, Path]:
    """Write the script under ``<run.dir>/slurm/`` and sbatch it; returns (job id, script path)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch not found: submit from a Slurm login node (or start slurm/local/up.sh and "
                         "export SLURM_CONF)")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output directory
    path = run_dir / "slurm" / f"train-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    proc = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        path.unlink()
        raise SlurmError(f"sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0], path


def template_path(name: str = "train.sbatch") -> Path:
    """The batch-script template shipped with the package (package data, so an installed hpctrain finds it
    without the source tree); a file on disk, as sbatch needs one."""
    path = Path(str(importlib.resources.files("hpctrain") / "templates" / name))
    if not path.is_file():
        raise SlurmError(f"{path}: batch script template missing from this hpctrain installation: reinstall it")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`hpctrain slurm render | submit`."""
    ssub = parser.add_subparsers(dest="slurm_command", required=True)
    for name, what in (("render", "print the batch script"), ("submit", "write it under <run.dir>/slurm/, "
                                                                        "sbatch it, print the job id")):
        sp = ssub.add_parser(name, help=what)
        sp.add_argument("--config", help="TOML config file for hpctrain train")
        sp.add_argument("--nodes", type=int, default=1)
        tasks = sp.add_mutually_exclusive_group()
        tasks.add_argument("--ntasks", type=int, help="ranks in all")
        tasks.add_argument("--ntasks-per-node", type=int, help="ranks per node (default: GPUs per node, or 1)")
        sp.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one rank each (0: CPU job)")
        sp.add_argument("--time", default="01:00:00", help="time limit (default 01:00:00)")
        sp.add_argument("--partition", default="")
        sp.add_argument("--account", default="")
        sp.add_argument("--job-name", default="hpctrain")
        sp.add_argument("--signal-grace", type=int, default=120, metavar="SECONDS",
                        help="SIGUSR1 this long before the time limit: checkpoint and requeue (default 120)")
        sp.add_argument("--max-restarts", type=int, default=5, help="requeues before giving up (default 5)")
        sp.add_argument("--output", default="", help="sbatch --output pattern (default <run.dir>/logs/%%x-%%j.out)")
        sp.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def main(args: argparse.Namespace) -> int:
    job = JobOptions(nodes=args.nodes, ntasks=args.ntasks, ntasks_per_node=args.ntasks_per_node,
                           gpus_per_node=args.gpus_per_node, time=args.time, partition=args.partition,
                           account=args.account, job_name=args.job_name, signal_grace_s=args.signal_grace,
                           max_restarts=args.max_restarts, output=args.output)
    script = render(args.config, args.overrides, job)
    if args.slurm_command == "render":
        print(script, end="")
        return 0
    run_dir = Path(config_mod.load(args.config, args.overrides).run.dir).resolve()
    job_id, path = submit(script, run_dir)
    print(job_id)
    log.info("submitted %s as job %s; logs in %s", path, job_id, run_dir / "logs")
    return 0
