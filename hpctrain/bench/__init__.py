"""Benchmarks that print side-by-side ratios: `hpctrain bench loader | allreduce | compare | memory`. Nothing imports
this package but the CLI."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hpctrain.bench import allreduce, compare, loader, memory

    bsub = parser.add_subparsers(dest="bench_command", required=True)
    bl = bsub.add_parser("loader", help="hpctrain HDF5 reader vs raw sequential read vs naive DataLoader")
    loader.add_arguments(bl)
    ba = bsub.add_parser("allreduce", help="Horovod (none/fp16) vs raw MPI Allreduce, 4 KB to 256 MB, and memcpy; "
                                           "run it under mpirun/srun")
    allreduce.add_arguments(ba)
    bc = bsub.add_parser("compare", help="hpctrain vs a raw Horovod loop, PyTorch DDP (torchrun) or a plain "
                         "PyTorch loop, interleaved")
    compare.add_arguments(bc)
    bm = bsub.add_parser("memory", help="the largest transformer each ZeRO stage trains within a per-rank memory "
                         "budget (bisection), and PyTorch's ZeroRedundancyOptimizer and FSDP2 beside hpctrain")
    memory.add_arguments(bm)


def main(args: argparse.Namespace) -> int:
    if args.bench_command == "loader":
        from hpctrain.bench import loader

        loader.main(args)
        return 0
    if args.bench_command == "allreduce":
        from hpctrain.bench import allreduce

        return allreduce.main(args)
    if args.bench_command == "memory":
        from hpctrain.bench import memory

        return memory.main(args)
    from hpctrain.bench import compare

    return compare.main(args)
