"""`hpctrain bench compare`: hpctrain against a minimal raw Horovod loop and PyTorch DDP (torchrun), side by side
(and, with ``--impls hpctrain,torch``, against a plain one-process PyTorch loop: the one-GPU comparison).

The same model, synthetic data, per-rank batch, threads per rank and SGD kernel for all of them; runs
interleaved (every implementation once per round, in an order rotated each round, rounds repeated) so
drifting machine load hits all of them alike; the median of the rounds is reported with the ratios
hpctrain/peer, and with the lowest and highest ratio within a single round. Models: a communication-heavy
MLP (large dense layers, ~21M parameters), a compute-heavy CNN (convolutions) and a small Transformer.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpctrain.config import RunConfig, UserError, load
from hpctrain.runtime import malloc_thresholds

MODELS = {  # name: the `hpctrain train` overrides that define it (model and per-rank batch)
    "mlp-21m": ("model.name=mlp", "model.width=2048", "model.depth=6", "train.batch_size=64"),
    "cnn": ("model.name=cnn", "model.width=16", "model.depth=2", "train.batch_size=32"),
    "transformer": ("model.name=transformer", "model.width=256", "model.depth=4", "model.heads=4",
                    "model.seq_len=128", "train.batch_size=16"),
}
# Steps per run unless --steps says otherwise: about 10 s of timed training each on 2 CPU cores, long enough
# that a few ms of scheduling noise do not decide a ratio.
STEPS = {"mlp-21m": 150, "cnn": 500, "transformer": 100}
IMPLS = ("hpctrain", "horovod", "ddp", "torch")
DEFAULT_IMPLS = IMPLS[:3]  # the plain torch loop only on request: it runs one process


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mpirun(ranks: int) -> list[str]:
    # dist: the same launch for hpctrain and raw Horovod. yield_when_idle: hpctrain's own default on CPU
    # (comm.yield_when_idle), given to the raw loop too so the comparison measures the framework, not MPI.
    over = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
    return ["mpirun", "-np", str(ranks), *over, "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]


def overrides(model: str, batch: int | None) -> list[str]:
    return [*MODELS[model], *([f"train.batch_size={batch}"] if batch else [])]


def command(impl: str, model: str, ranks: int, steps: int, run_dir: str, launcher: str = "mpirun",
            batch: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line of one run and the variables to add to its environment. ``launcher`` "direct":
    one plain process (1 rank), for machines without MPI such as a one-GPU box."""
    sets = overrides(model, batch)
    per_rank = load(None, sets).train.batch_size
    launch = mpirun(ranks) if launcher == "mpirun" else []
    if impl == "hpctrain":
        return [*launch, _bin("hpctrain"), "train", *sets, f"train.steps={steps}", "optim.lr=0.01",
                f"run.dir={run_dir}", "checkpoint.at_end=false", "checkpoint.resume=never",
                f"run.log_every={steps}", f"data.samples={per_rank * ranks * 8}"], {}
    peer = ["-m", "hpctrain.bench.peers", impl, "--steps", str(steps), *sets, "optim.lr=0.01"]
    if impl == "horovod":
        # identical settings: also hpctrain's default run.malloc_keep_mb, as glibc's variables
        mmap_bytes, trim_bytes = malloc_thresholds(RunConfig().malloc_keep_mb)
        env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_bytes), "MALLOC_TRIM_THRESHOLD_": str(trim_bytes)}
        passed = [a for k in env for a in ("-x", k)] if launch else []
        return [*launch, *passed, sys.executable, *peer], env
    if impl == "ddp":
        return [_bin("torchrun"), "--standalone", f"--nproc_per_node={ranks}", *peer], {}
    return [sys.executable, *peer], {}


def run_once(impl: str, model: str, ranks: int, steps: int, launcher: str = "mpirun",
             batch: int | None = None) -> float:
    """samples/s of one run (global, post-warm-up, slowest rank)."""
    with tempfile.TemporaryDirectory(prefix="hpctrain-compare-") as tmp:
        cmd, extra = command(impl, model, ranks, steps, tmp, launcher, batch)
        env = {**os.environ, **extra, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        if impl == "hpctrain":
            return float(json.loads((Path(tmp) / "summary.json").read_text())["samples_per_sec"])
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        return float(json.loads(line)["samples_per_sec"])


def compare(models: list[str], ranks: list[int], rounds: int, steps: int | None,
            impls: tuple[str, ...] = DEFAULT_IMPLS, launcher: str = "mpirun",
            batch: int | None = None) -> dict[str, Any]:
    """Every implementation in ``impls`` (hpctrain first) once per round, for each model and rank count."""
    raw: dict[str, list[float]] = {}
    for r in range(rounds):
        for model in models:
            for p in ranks:
                # rotated each round: a run is slowed by the teardown of the one before it, so no
                # implementation may always follow the same one
                for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                    rate = run_once(impl, model, p, steps or STEPS[model], launcher, batch)
                    raw.setdefault(f"{model}|{p}|{impl}", []).append(rate)
                    print(f"  round {r + 1}/{rounds} {model:11s} {p} rank(s) {impl:9s} {rate:10.1f} samples/s",
                          file=sys.stderr, flush=True)
    rows = []
    for model in models:
        for p in ranks:
            runs = {impl: raw[f"{model}|{p}|{impl}"] for impl in impls}
            med = {impl: statistics.median(runs[impl]) for impl in impls}
            row: dict[str, Any] = {"model": model, "ranks": p, **{f"{i}_samples_per_sec": med[i] for i in impls}}
            for peer in impls[1:]:
                row[f"hpctrain_vs_{peer}"] = med["hpctrain"] / med[peer]
                # per round: the implementations ran back to back, so a round's ratio is free of drift
                # between rounds; their spread says how far one run can be trusted
                row[f"hpctrain_vs_{peer}_per_round"] = [
                    a / b for a, b in zip(runs["hpctrain"], runs[peer], strict=True)]
            rows.append({**row, "runs": runs})
    return {"rows": rows, "rounds": rounds, "impls": list(impls), "launcher": launcher,
            "steps": {m: steps or STEPS[m] for m in models}, "models": {m: overrides(m, batch) for m in models},
            "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "gpu": _gpu_name()},
            "command": " ".join(sys.argv), "time": time.time()}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def format_table(result: dict[str, Any]) -> str:
    impls = result.get("impls", DEFAULT_IMPLS)
    peers = impls[1:]
    lines = [f"{'model':11s} {'ranks':>5s} " + " ".join(f"{i:>10s}" for i in impls) + "".join(
        f" {'vs ' + p:>11s} {'(rounds)':>11s}" for p in peers)]
    for r in result["rows"]:
        lines.append(f"{r['model']:11s} {r['ranks']:5d} " + " ".join(
            f"{r[f'{i}_samples_per_sec']:10.1f}" for i in impls) + "".join(
            f" {r[f'hpctrain_vs_{p}']:10.3f}x {_spread(r[f'hpctrain_vs_{p}_per_round']):>11s}" for p in peers))
    lines.append(f"samples/s: median of {result['rounds']} interleaved rounds; vs: ratio of the medians; "
                 "(rounds): lowest-highest ratio within one round")
    return "\n".join(lines)


def check_impls(impls: tuple[str, ...], ranks: list[int], launcher: str) -> None:
    """Refuse a matrix that cannot run, before the first of its runs."""
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or impls[:1] != ("hpctrain",):
        raise UserError(f"--impls: hpctrain first, then any of {', '.join(IMPLS[1:])} (got {','.join(impls)})")
    if ("torch" in impls or launcher == "direct") and ranks != [1]:
        raise UserError("--ranks: the plain torch loop and --launcher direct run one process: use --ranks 1")


def main(args: Any) -> int:
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    ranks = [int(v) for v in args.ranks.split(",")]
    impls = tuple(args.impls.split(",")) if args.impls else DEFAULT_IMPLS
    check_impls(impls, ranks, args.launcher)
    result = compare(models, ranks, args.rounds, args.steps, impls, args.launcher, args.batch)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0
