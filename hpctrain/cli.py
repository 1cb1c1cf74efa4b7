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
from pathlib import Path

from hpctrain import config as config_mod
from hpctrain import errors
from hpctrain.errors import EXIT_FAILURE, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE, env_rank  # noqa: F401 - the codes, here too

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

    d = sub.add_parser("data", help="create, convert, check, stage and describe sharded HDF5 datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)

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

    b = sub.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bl = bsub.add_parser("loader", help="hpctrain HDF5 reader vs raw sequential read vs naive DataLoader")
    bl.add_argument("--path", help="existing dataset (default: generate synthetic images in a temp dir)")
    bl.add_argument("--samples", type=int, default=20_000, help="generated dataset size (12 KiB/sample)")
    bl.add_argument("--shards", type=int, default=4)
    bl.add_argument("--batch", type=int, default=256)
    bl.add_argument("--window", type=int, default=4096, help="reader shuffle window")
    bl.add_argument("--repeats", type=int, default=3)
    bl.add_argument("--epochs", type=int, default=3, help="epochs the hpctrain reader is timed over")
    bl.add_argument("--naive-samples", type=int, default=5_000, help="samples timed for the naive loader")
    bl.add_argument("--no-cold", action="store_true", help="skip the cold-cache measurement")
    bl.add_argument("--json", help="also write the results to this file")

    ba = bsub.add_parser("allreduce", help="Horovod (none/fp16) vs raw MPI Allreduce, 4 KB to 256 MB, and memcpy; "
                                           "run it under mpirun/srun")
    from hpctrain.bench import allreduce

    allreduce.add_arguments(ba)
    bc = bsub.add_parser("compare", help="hpctrain vs a raw Horovod loop, PyTorch DDP (torchrun) or a plain "
                         "PyTorch loop, interleaved")
    bc.add_argument("--models", help="comma list of mlp-21m, cnn, transformer (default mlp-21m,cnn; none when "
                                     "--model is given)")
    bc.add_argument("--model", metavar="MODULE:CALLABLE", help="a model of your own by import path (its "
                    "directory on PYTHONPATH), built with --model-args, its synthetic samples from --set; run "
                    "beside the --models named, else alone")
    bc.add_argument("--model-args", metavar="K=V,K=V", help="--model's keyword arguments: key=value,key=value "
                    "(TOML values) or a JSON object")
    bc.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="for --model, repeatable: data.sample_shape=[3,32,32], data.sample_kind=classes|tokens, "
                         "data.num_classes=N, train.batch_size=N (after --batch), train.seed=N, model.args.K=V")
    bc.add_argument("--ranks", default="1,2", help="comma list of rank counts")
    bc.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    bc.add_argument("--until-ci", type=float, metavar="W", help="after --rounds (at least 3), add rounds until "
                    "every samples/s ratio's 95%% interval is within +-W of its estimate (e.g. 0.03)")
    bc.add_argument("--max-rounds", type=int, default=20, help="with --until-ci: stop after this many rounds")
    bc.add_argument("--steps", type=int, help="steps per run (default: mlp-21m 150, cnn 500, transformer 100, "
                                               "--model 200; 5 warm-up steps are not timed)")
    bc.add_argument("--impls", help="hpctrain first, then api (hpctrain.fit from a script, mpirun) and peers: "
                                    "horovod (raw loop, mpirun), ddp (torchrun), torch (plain loop, one process); "
                                    "default hpctrain,horovod,ddp")
    bc.add_argument("--launcher", default="mpirun", choices=["mpirun", "direct"],
                    help="how hpctrain and the raw Horovod loop start: mpirun, or direct (one process, no MPI "
                         "launcher; --ranks 1)")
    bc.add_argument("--batch", type=int, help="per-rank batch for every model (default: each model's own)")
    bc.add_argument("--json", help="also write the results to this file")

    sub.add_parser("info", help="versions, Horovod build, launcher, rank/size, device, threads (every rank)")

    sc = sub.add_parser("scaling", help="weak/strong scaling studies and their reports")
    scsub = sc.add_subparsers(dest="scaling_command", required=True)
    sr = scsub.add_parser("run", help="train at each rank count (mpirun, or Slurm jobs), append records")
    sr.add_argument("--mode", required=True, choices=["weak", "strong"])
    sr.add_argument("--ranks", default="1,2,4", help="comma list of rank counts (default 1,2,4)")
    sr.add_argument("--config", help="TOML config for hpctrain train")
    sr.add_argument("--global-batch", type=int, help="strong: global batch split over the ranks "
                                                      "(default: train.batch_size x the largest rank count)")
    sr.add_argument("--repeats", type=int, default=1, help="runs per rank count (the report takes the median)")
    sr.add_argument("--slurm", action="store_true", help="submit each run with sbatch --wait slurm/train.sbatch")
    sr.add_argument("--out", required=True, help="records file (JSON lines), appended to")
    sr.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    sp = scsub.add_parser("report", help="Markdown report with tables, PNG plots and a communication model")
    sp.add_argument("records", help="records file written by `hpctrain scaling run`")
    sp.add_argument("--out", required=True, help="directory for report.md and the plots")
    sp.add_argument("--allreduce", help="`hpctrain bench allreduce --json` output: fit alpha/beta, predict 8-1024")
    sp.add_argument("--link-gbps", type=float, default=100.0, help="stated link speed for the model (Gb/s)")
    sp.add_argument("--link-latency-us", type=float, default=5.0, help="stated link latency for the model")
    sp.add_argument("--compute-s", type=float, help="compute time per step for the model (default: measured)")

    s = sub.add_parser("slurm", help="fill slurm/train.sbatch from a config (render) and sbatch it (submit)")
    ssub = s.add_subparsers(dest="slurm_command", required=True)
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


def cmd_data(args: argparse.Namespace) -> int:
    from hpctrain import dist
    from hpctrain.data import format as fmt
    from hpctrain.data import sources, writer
    from hpctrain.data.format import DataError

    if args.data_command == "validate":
        m = fmt.validate(args.path, checksum=not args.no_checksum)
        print(f"{args.path}: OK ({m.num_samples} samples, {len(m.shards)} shards"
              f"{', checksums verified' if not args.no_checksum else ''})")
        return EXIT_OK
    if args.data_command == "inspect":
        print(fmt.describe(args.path))
        return EXIT_OK
    comm = dist.mpi_comm()
    rank = comm.Get_rank() if comm is not None else 0
    if args.data_command == "stage":
        from hpctrain.data.stage import stage

        local = dist.node_comm(comm)
        path = stage(args.path, args.dest, local.Get_rank() if local else 0,
                     local.Barrier if local else (lambda: None))
        if rank == 0:
            print(path)
        return EXIT_OK
    if args.data_command == "synth":
        shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
        fields, read, meta = sources.synthetic_source(args.task, args.samples, args.seed, shape, args.classes,
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
        fields, n, read = sources.from_arrays(specs)
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
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_command == "loader":
        from hpctrain.bench import loader

        loader.main(args)
    elif args.bench_command == "allreduce":
        from hpctrain.bench import allreduce

        return allreduce.main(args)
    elif args.bench_command == "compare":
        from hpctrain.bench import compare

        return compare.main(args)
    return EXIT_OK


def cmd_scaling(args: argparse.Namespace) -> int:
    if args.scaling_command == "run":
        from hpctrain.scaling import run

        ranks = [int(v) for v in args.ranks.split(",") if v.strip()]
        records = run.run_study(args.mode, ranks, args.config, args.overrides, Path(args.out), args.global_batch,
                                args.repeats, args.slurm)
        for r in records:
            print(f"{r['mode']:6s} {r['world_size']:3d} rank(s)  {r['samples_per_sec']:12.1f} samples/s")
        print(f"records appended to {args.out}")
        return EXIT_OK
    from hpctrain.scaling import report

    path = report.write_report(args.records, args.out, args.allreduce, args.link_gbps, args.link_latency_us,
                               compute_s=args.compute_s)
    print(path)
    return EXIT_OK


def cmd_slurm(args: argparse.Namespace) -> int:
    from hpctrain import slurm

    job = slurm.JobOptions(nodes=args.nodes, ntasks=args.ntasks, ntasks_per_node=args.ntasks_per_node,
                           gpus_per_node=args.gpus_per_node, time=args.time, partition=args.partition,
                           account=args.account, job_name=args.job_name, signal_grace_s=args.signal_grace,
                           max_restarts=args.max_restarts, output=args.output)
    script = slurm.render(args.config, args.overrides, job)
    if args.slurm_command == "render":
        print(script, end="")
        return EXIT_OK
    run_dir = Path(config_mod.load(args.config, args.overrides).run.dir).resolve()
    job_id, path = slurm.submit(script, run_dir)
    print(job_id)
    log.info("submitted %s as job %s; logs in %s", path, job_id, run_dir / "logs")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "config": cmd_config, "info": cmd_info, "data": cmd_data, "bench": cmd_bench,
            "slurm": cmd_slurm, "scaling": cmd_scaling}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from hpctrain import runtime

    runtime.setup_logging(env_rank(), 1)
    code, result = errors.run_guarded(lambda: COMMANDS[args.command](args))
    sys.exit(result if code == EXIT_OK else code)
