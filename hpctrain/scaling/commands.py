"""`hpctrain scaling run | report`: weak/strong scaling studies and their reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpctrain.errors import UserError
from hpctrain.scaling import comm_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scsub = parser.add_subparsers(dest="scaling_command", required=True)
    sr = scsub.add_parser("run", help="train at each rank count (mpirun, or Slurm jobs), append records")
    sr.add_argument("--mode", required=True, choices=["weak", "strong"])
    sr.add_argument("--ranks", default="1,2,4", help="comma list of rank counts (default 1,2,4)")
    sr.add_argument("--nodes", default="1", help="comma list of node counts (Slurm launchers): each runs the "
                                                 "rank counts that spread evenly over it (default 1)")
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
    sp.add_argument("--allreduce", help="`hpctrain bench allreduce --json` output of a run on one node: fit "
                                        "alpha/beta, predict 8-1024 ranks")
    sp.add_argument("--allreduce-inter", help="the same, one rank on each of several nodes (srun -N2 "
                                              "--ntasks-per-node=1): adds the two-level model, flat against "
                                              "hierarchical rings")
    sp.add_argument("--link-gbps", type=float, default=comm_model.LINK_GBPS,
                    help="stated link between nodes, per node, for the model (Gb/s; default %(default)g)")
    sp.add_argument("--link-latency-us", type=float, default=comm_model.LINK_LATENCY_US,
                    help="stated latency between nodes (default %(default)g)")
    sp.add_argument("--intra-gbps", type=float, default=comm_model.INTRA_GBPS,
                    help="stated link within a node, for the two-level model (Gb/s; default %(default)g, NVLink 3)")
    sp.add_argument("--intra-latency-us", type=float, default=comm_model.INTRA_LATENCY_US,
                    help="stated latency within a node (default %(default)g)")
    sp.add_argument("--gpus-per-node", type=int, default=comm_model.GPUS_PER_NODE,
                    help="ranks per node in the two-level model (default %(default)d)")
    sp.add_argument("--fit-impl", choices=["horovod", "mpi"], default="horovod",
                    help="whose all-reduce timings the model is fitted to: horovod (its cycle time shows in α; "
                         "default) or mpi (the transport alone; needs `bench allreduce --impl ...,mpi`)")
    sp.add_argument("--compute-s", type=float, help="compute time per step for the model (default: measured)")
    sp.add_argument("--model-bytes", type=float, help="gradient bytes all-reduced per step for the model "
                                                      "(default: the records' parameters x 4, x 2 with fp16)")


def main(args: argparse.Namespace) -> int:
    if args.scaling_command == "run":
        from hpctrain.scaling import run

        ranks, nodes = (_counts(text, name) for text, name in ((args.ranks, "--ranks"), (args.nodes, "--nodes")))
        study = run.Study(args.mode, ranks, args.config, args.overrides, args.global_batch, args.repeats,
                          args.launcher, nodes)
        records = run.run_study(study, Path(args.out))
        for r in records:
            print(f"{r['mode']:6s} {r['world_size']:3d} rank(s) {r.get('nodes', 1):3d} node(s)  "
                  f"{r['samples_per_sec']:12.1f} samples/s")
        print(f"records appended to {args.out}")
        return 0
    from hpctrain.scaling import report

    inputs = report.ModelInputs(
        allreduce=Path(args.allreduce) if args.allreduce else None,
        allreduce_inter=Path(args.allreduce_inter) if args.allreduce_inter else None,
        link_gbps=args.link_gbps, link_latency_us=args.link_latency_us, intra_gbps=args.intra_gbps,
        intra_latency_us=args.intra_latency_us, gpus_per_node=args.gpus_per_node, impl=args.fit_impl,
        compute_s=args.compute_s, model_bytes=args.model_bytes)
    path = report.write_report(args.records, args.out, inputs)
    print(path)
    return 0


def _counts(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option}: expected a comma list of whole numbers, got {text!r}") from None
