"""`hpctrain scaling run | report`: weak/strong scaling studies and their reports."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scsub = parser.add_subparsers(dest="scaling_command", required=True)
    sr = scsub.add_parser("run", help="train at each rank count (mpirun, or Slurm jobs), append records")
    sr.add_argument("--mode", required=True, choices=["weak", "strong"])
    sr.add_argument("--ranks", default="1,2,4", help="comma list of rank counts (default 1,2,4)")
    sr.add_argument("--config", help="TOML config for hpctrain train")
    sr.add_argument("--global-batch", type=int, help="strong: global batch split over the ranks "
                                                      "(default: train.batch_size x the largest rank count)")
    sr.add_argument("--repeats", type=int, default=1, help="runs per rank count (the report takes the median)")
    sr.add_argument("--launcher", choices=["mpirun", "sbatch", "srun"], default="mpirun",
                    help="mpirun: ranks on this machine (default); sbatch: each point a job of slurm/train.sbatch "
                         "(sbatch --wait); srun: each point a step of the Slurm allocation this runs in "
                         "(slurm/scaling.sbatch)")
    sr.add_argument("--slurm", action="store_const", const="sbatch", dest="launcher",
                    help="the same as --launcher sbatch")
    sr.add_argument("--out", required=True, help="records file (JSON lines), appended to")
    sr.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    sp = scsub.add_parser("report", help="Markdown report with tables, PNG plots and a communication model")
    sp.add_argument("records", help="records file written by `hpctrain scaling run`")
    sp.add_argument("--out", required=True, help="directory for report.md and the plots")
    sp.add_argument("--allreduce", help="`hpctrain bench allreduce --json` output: fit alpha/beta, predict 8-1024")
    sp.add_argument("--link-gbps", type=float, default=100.0, help="stated link speed for the model (Gb/s)")
    sp.add_argument("--link-latency-us", type=float, default=5.0, help="stated link latency for the model")
    sp.add_argument("--compute-s", type=float, help="compute time per step for the model (default: measured)")


def main(args: argparse.Namespace) -> int:
    if args.scaling_command == "run":
        from hpctrain.scaling import run

        ranks = [int(v) for v in args.ranks.split(",") if v.strip()]
        study = run.Study(args.mode, ranks, args.config, args.overrides, args.global_batch, args.repeats,
                          args.launcher)
        records = run.run_study(study, Path(args.out))
        for r in records:
            print(f"{r['mode']:6s} {r['world_size']:3d} rank(s)  {r['samples_per_sec']:12.1f} samples/s")
        print(f"records appended to {args.out}")
        return 0
    from hpctrain.scaling import report

    path = report.write_report(args.records, args.out, args.allreduce, args.link_gbps, args.link_latency_us,
                               compute_s=args.compute_s)
    print(path)
    return 0
