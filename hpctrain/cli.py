"""The ``hpctrain`` command: argument parsing and exit codes. The only module that calls ``sys.exit``.

Exit codes: 0 done; 1 unexpected failure (the whole MPI job is aborted); 2 bad input, config or launch;
75 checkpointed on request, requeue me (EX_TEMPFAIL); 130 (143) interrupted by SIGINT (SIGTERM) outside
training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from hpctrain import bench, errors, slurm
from hpctrain import config as config_mod
from hpctrain.data import commands as data_commands
from hpctrain.errors import EXIT_FAILURE, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE, env_rank  # noqa: F401 - the codes, here too
from hpctrain.scaling import commands as scaling_commands

log = logging.getLogger("hpctrain")


DESCRIPTION = """\
Data-parallel PyTorch training with Horovod on sharded HDF5 data, on a workstation or a Slurm cluster.
One process trains alone; for many ranks start it with mpirun -np N, horovodrun -np N (or --gloo), or
srun --mpi=pmix inside a Slurm job (slurm/train.sbatch). `hpctrain COMMAND --help` describes each command."""

EPILOG = """\
examples:
  hpctrain train --config configs/demo.toml optim.lr=0.1
  mpirun -np 4 hpctrain train --config run.toml
  hpctrain data synth data/train --samples 8192
  hpctrain slurm submit --ntasks 8 --config run.toml

exit codes:
  0   done
  1   unexpected failure: a traceback is printed and every rank of the job is ended
  2   bad input, config or launch: one line "hpctrain: error: ..." says what to change
  75  stopped by SIGUSR1/SIGTERM/Ctrl-C after writing a checkpoint: requeue or rerun to resume
  130 interrupted by Ctrl-C (143: SIGTERM) outside training; data commands remove partial output

A launcher may report other codes (mpirun returns 1 after Ctrl-C); <run.dir>/exit.json records
hpctrain's own. Docs: docs/getting-started.md, docs/fault-tolerance.md."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpctrain", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (run it under mpirun, horovodrun or srun for many ranks)")
    t.add_argument("--config", help="TOML config file (defaults apply to missing keys)")
    t.add_argument("--resume", help="auto (default: newest good checkpoint), never, or a checkpoint path; "
                                    "same as checkpoint.resume=...")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")

    c = sub.add_parser("config", help="print the resolved config, or every key with its help")
    c.add_argument("--config", help="TOML config file")
    c.add_argument("--keys", action="store_true", help="list every key with type, default and help")
    c.add_argument("overrides", nargs="*", metavar="section.key=value")

    sub.add_parser("info", help="versions, Horovod build, launcher, rank/size, device, threads (every rank)")
    data_commands.add_arguments(sub.add_parser(
        "data", help="create, convert, check, stage and describe sharded HDF5 datasets"))
    bench.add_arguments(sub.add_parser("bench", help="benchmarks that print side-by-side ratios"))
    scaling_commands.add_arguments(sub.add_parser("scaling", help="weak/strong scaling studies and their reports"))
    slurm.add_arguments(sub.add_parser(
        "slurm", help="fill slurm/train.sbatch from a config (render) and sbatch it (submit)"))

    return p


def cmd_train(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *([f"checkpoint.resume={json.dumps(args.resume)}"] if args.resume else [])]
    cfg = config_mod.load(args.config, overrides)  # all validation before any rank communicates
    from hpctrain import api

    summary = api.train(cfg)  # the same path as hpctrain.fit in a user's script
    return EXIT_REQUEUE if summary.get("preempted") else EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print(config_mod.describe())
    else:
        print(config_mod.to_toml(config_mod.load(args.config, args.overrides)), end="")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from hpctrain.info import info_report

    report = info_report(config_mod.CommConfig())
    if report is not None:
        print(report)
    return EXIT_OK


COMMANDS = {"train": cmd_train, "config": cmd_config, "info": cmd_info, "data": data_commands.main,
            "bench": bench.main, "slurm": slurm.main, "scaling": scaling_commands.main}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from hpctrain import runtime

    runtime.setup_logging(env_rank(), 1)
    code, result = errors.run_guarded(lambda: COMMANDS[args.command](args))
    sys.exit(result if code == EXIT_OK else code)
