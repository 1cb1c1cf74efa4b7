"""`hpctrain data`: create, convert, check, stage and describe sharded HDF5 datasets (parallel under mpirun)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dsub = parser.add_subparsers(dest="data_command", required=True)

    def writer_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("out", help="dataset directory to create (must not exist unless --overwrite)")
        p.add_argument("--shards", type=int, help="number of shard files (default: ~256 MiB each)")
        p.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
        p.add_argument("--chunk-samples", type=int, help="HDF5 chunk size in samples (default: ~1 MiB)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset (atomically)")

    ds = dsub.add_parser("synth", help="generate a deterministic synthetic dataset (parallel under mpirun)")
    writer_args(ds)
    ds.add_argument("--task", choices=["images", "vectors", "regression", "tokens"], default="images")
    ds.add_argument("--samples", type=int, default=8192)
    ds.add_argument("--seed", type=int, default=1234)
    ds.add_argument("--shape", help="per-sample input shape, e.g. 3,32,32 or 64")
    ds.add_argument("--classes", type=int, default=10, help="classes (or regression outputs)")
    ds.add_argument("--split", choices=["train", "val", "test"], default="train",
                    help="disjoint samples of the same task (same --seed) for validation or test sets")

    dh = dsub.add_parser("shard", help="convert .npy/.npz/.h5 arrays to the format (parallel under mpirun)")
    writer_args(dh)
    dh.add_argument("--field", action="append", required=True, metavar="NAME=FILE[:ARRAY]",
                    help="a field and its source: x=images.npy, y=data.npz:labels, x=raw.h5:/images")
    dh.add_argument("--inputs", default=None, help="field the model takes (default: the first --field)")
    dh.add_argument("--targets", default=None, help="field the loss uses (default: the second --field)")
    dh.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="free metadata")

    dv = dsub.add_parser("validate", help="check manifest against shards; exit 0, or 2 naming the bad file")
    dv.add_argument("path")
    dv.add_argument("--no-checksum", action="store_true", help="skip SHA-256 (sizes and layout only)")

    dst = dsub.add_parser("stage", help="copy a dataset to node-local storage once per node; prints the path")
    dst.add_argument("path")
    dst.add_argument("dest", help="node-local directory, e.g. $TMPDIR")

    di = dsub.add_parser("inspect", help="human summary of a dataset")
    di.add_argument("path")


def main(args: argparse.Namespace) -> int:
    from hpctrain import dist
    from hpctrain.data import convert, writer
    from hpctrain.data import format as fmt
    from hpctrain.data.format import DataError

    if args.data_command == "validate":
        m = fmt.validate(args.path, checksum=not args.no_checksum)
        print(f"{args.path}: OK ({m.num_samples} samples, {len(m.shards)} shards"
              f"{', checksums verified' if not args.no_checksum else ''})")
        return 0
    if args.data_command == "inspect":
        print(fmt.describe(args.path))
        return 0
    comm = dist.mpi_comm()
    rank = comm.Get_rank() if comm is not None else 0
    if args.data_command == "stage":
        from hpctrain.data.stage import stage

        local = dist.node_comm(comm)
        path = stage(args.path, args.dest, local.Get_rank() if local else 0,
                     local.Barrier if local else (lambda: None))
        if rank == 0:
            print(path)
        return 0
    if args.data_command == "synth":
        shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
        fields, read, meta = convert.synthetic_input(args.task, args.samples, args.seed, shape, args.classes,
                                                            args.split)
        meta.update(seed=args.seed, split=args.split)
        n, inputs, targets = args.samples, "x", "y"
    else:
        specs = {}
        for item in args.field:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise DataError(f"--field {item!r}: expected NAME=FILE[:ARRAY]")
            specs[name] = spec
        fields, n, read = convert.from_arrays(specs)
        names = list(specs)
        inputs = args.inputs or names[0]
        targets = args.targets or (names[1] if len(names) > 1 else names[0])
        meta = {}
        for item in args.meta:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise DataError(f"--meta {item!r}: expected KEY=VALUE")
            try:
                meta[key] = json.loads(value)  # numbers and booleans stay numbers and booleans
            except json.JSONDecodeError:
                meta[key] = value
        meta["converted_from"] = {name: Path(spec).name for name, spec in specs.items()}
    opts = writer.WriteOptions(args.shards, args.compression, args.chunk_samples, inputs, targets, meta,
                               args.overwrite)
    try:
        writer.write_dataset(args.out, fields, read, n, opts, comm)
    except writer.Interrupted as e:  # a signal, honoured between blocks; the message says where the output is
        if rank == 0:
            print(f"hpctrain: interrupted: {e}", file=sys.stderr, flush=True)
        return 128 + e.signum  # the shell's code for "ended by this signal": 130 for Ctrl-C
    if rank == 0:
        print(fmt.describe(args.out))
    return 0
