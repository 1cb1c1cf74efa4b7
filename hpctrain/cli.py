"""The ``hpctrain`` command: argument parsing and exit codes. The only module that calls ``sys.exit``.

Exit codes: 0 done; 1 unexpected failure (the whole MPI job is aborted); 2 bad input, config or launch;
75 checkpointed on request, requeue me (EX_TEMPFAIL).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from hpctrain import config as config_mod
from hpctrain.config import UserError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REQUEUE = 0, 1, 2, 75

log = logging.getLogger("hpctrain")


def _env_rank() -> int:
    """This process's rank as the launcher says, before MPI is up (0 if it cannot tell)."""
    from hpctrain.runtime import detect_launcher

    try:
        return detect_launcher(os.environ).rank
    except UserError:
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpctrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (run it under mpirun, horovodrun or srun for many ranks)")
    t.add_argument("--config", help="TOML config file (defaults apply to missing keys)")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")

    c = sub.add_parser("config", help="print the resolved config, or every key with its help")
    c.add_argument("--config", help="TOML config file")
    c.add_argument("--keys", action="store_true", help="list every key with type, default and help")
    c.add_argument("overrides", nargs="*", metavar="section.key=value")

    sub.add_parser("info", help="versions, Horovod build, launcher, rank/size, device, threads (every rank)")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config, args.overrides)  # all validation before any rank communicates
    from hpctrain import runtime, train

    rt = runtime.init(cfg.comm)
    runtime.setup_logging(rt.rank, rt.size, cfg.run.log_all_ranks)
    train.run(cfg, rt)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print(config_mod.describe())
    else:
        print(config_mod.to_toml(config_mod.load(args.config, args.overrides)), end="")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from hpctrain import runtime

    report = runtime.info_report(config_mod.CommConfig())
    if report is not None:
        print(report)
    return EXIT_OK


COMMANDS = {"train": cmd_train, "config": cmd_config, "info": cmd_info}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from hpctrain import runtime

    runtime.setup_logging(_env_rank(), 1)
    try:
        code = COMMANDS[args.command](args)
    except UserError as e:
        if runtime.world_size() > 1:
            # dist: raised after MPI came up, maybe on one rank alone: name it and end every rank
            print(f"hpctrain: error (rank {runtime.world_rank()}): {e}", file=sys.stderr, flush=True)
            runtime.abort_world(EXIT_USAGE)
        elif _env_rank() == 0:  # before MPI: every rank fails the same way, one line is enough
            print(f"hpctrain: error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        runtime.abort_world(EXIT_FAILURE)  # dist: one rank's crash must not leave the others hanging
        sys.exit(EXIT_FAILURE)
    sys.exit(code)
