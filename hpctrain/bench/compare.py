"""`hpctrain bench compare`: hpctrain against a minimal raw Horovod loop and PyTorch DDP (torchrun), side by side.

The same model, synthetic data, per-rank batch, threads per rank and SGD kernel for all three; runs
interleaved (every implementation once per round, in an order rotated each round, rounds repeated) so
drifting machine load hits all of them alike; the median of the rounds is reported with the ratios
hpctrain/raw-Horovod and hpctrain/DDP, and with the lowest and highest ratio within a single round. Two
models: a communication-heavy MLP (large dense layers, ~21M parameters) and a compute-heavy CNN (convolutions).
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

from hpctrain.config import RunConfig, UserError
from hpctrain.runtime import malloc_thresholds

MODELS = {  # name: (registry model, width, depth, per-rank batch)
    "mlp-21m": ("mlp", 2048, 6, 64),
    "cnn": ("cnn", 16, 2, 32),
}
# Steps per run unless --steps says otherwise: about 10 s of timed training each on 2 CPU cores, long enough
# that a few ms of scheduling noise do not decide a ratio.
STEPS = {"mlp-21m": 150, "cnn": 500}
IMPLS = ("hpctrain", "horovod", "ddp")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mpirun(ranks: int) -> list[str]:
    # dist: the same launch for hpctrain and raw Horovod. yield_when_idle: hpctrain's own default on CPU
    # (comm.yield_when_idle), given to the raw loop too so the comparison measures the framework, not MPI.
    over = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
    return ["mpirun", "-np", str(ranks), *over, "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]


def command(impl: str, model: str, ranks: int, steps: int, run_dir: str) -> list[str]:
    name, width, depth, batch = MODELS[model]
    if impl == "hpctrain":
        return [*mpirun(ranks), _bin("hpctrain"), "train", f"model.name={name}", f"model.width={width}",
                f"model.depth={depth}", f"train.batch_size={batch}", f"train.steps={steps}", "optim.lr=0.01",
                f"run.dir={run_dir}", "checkpoint.at_end=false", "checkpoint.resume=never",
                f"run.log_every={steps}", "data.samples=" + str(batch * ranks * 8)]
    peer = ["-m", "hpctrain.bench.peers", impl, "--model", name, "--width", str(width), "--depth", str(depth),
            "--batch", str(batch), "--steps", str(steps)]
    if impl == "horovod":
        # identical settings: also hpctrain's default run.malloc_keep_mb, as glibc's variables
        mmap_bytes, trim_bytes = malloc_thresholds(RunConfig().malloc_keep_mb)
        return [*mpirun(ranks), "-x", f"MALLOC_MMAP_THRESHOLD_={mmap_bytes}", "-x",
                f"MALLOC_TRIM_THRESHOLD_={trim_bytes}", sys.executable, *peer]
    return [_bin("torchrun"), "--standalone", f"--nproc_per_node={ranks}", *peer]


def run_once(impl: str, model: str, ranks: int, steps: int) -> float:
    """samples/s of one run (global, post-warm-up, slowest rank)."""
    with tempfile.TemporaryDirectory(prefix="hpctrain-compare-") as tmp:
        cmd = command(impl, model, ranks, steps, tmp)
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        if impl == "hpctrain":
            return float(json.loads((Path(tmp) / "summary.json").read_text())["samples_per_sec"])
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        return float(json.loads(line)["samples_per_sec"])


def compare(models: list[str], ranks: list[int], rounds: int, steps: int | None) -> dict[str, Any]:
    raw: dict[str, list[float]] = {}
    for r in range(rounds):
        for model in models:
            for p in ranks:
                # rotated each round: a run is slowed by the teardown of the one before it, so no
                # implementation may always follow the same one
                for impl in IMPLS[r % len(IMPLS):] + IMPLS[:r % len(IMPLS)]:
                    rate = run_once(impl, model, p, steps or STEPS[model])
                    raw.setdefault(f"{model}|{p}|{impl}", []).append(rate)
                    print(f"  round {r + 1}/{rounds} {model:8s} {p} rank(s) {impl:9s} {rate:10.1f} samples/s",
                          file=sys.stderr, flush=True)
    rows = []
    for model in models:
        for p in ranks:
            runs = {impl: raw[f"{model}|{p}|{impl}"] for impl in IMPLS}
            med = {impl: statistics.median(runs[impl]) for impl in IMPLS}
            # per round: the three ran back to back, so a round's ratio is free of drift between rounds;
            # their spread says how far one run can be trusted
            rounds_vs = {peer: [a / b for a, b in zip(runs["hpctrain"], runs[peer], strict=True)]
                         for peer in ("horovod", "ddp")}
            rows.append({"model": model, "ranks": p, **{f"{i}_samples_per_sec": med[i] for i in IMPLS},
                         "hpctrain_vs_horovod": med["hpctrain"] / med["horovod"],
                         "hpctrain_vs_ddp": med["hpctrain"] / med["ddp"],
                         "hpctrain_vs_horovod_per_round": rounds_vs["horovod"],
                         "hpctrain_vs_ddp_per_round": rounds_vs["ddp"], "runs": runs})
    return {"rows": rows, "rounds": rounds, "steps": {m: steps or STEPS[m] for m in models},
            "models": {m: MODELS[m] for m in models},
            "host": {"hostname": platform.node(), "cpus": os.cpu_count()}, "command": " ".join(sys.argv),
            "time": time.time()}


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'model':8s} {'ranks':>5s} {'hpctrain':>10s} {'horovod':>10s} {'ddp':>10s} "
             f"{'vs horovod':>11s} {'(rounds)':>11s} {'vs ddp':>8s} {'(rounds)':>11s}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:8s} {r['ranks']:5d} {r['hpctrain_samples_per_sec']:10.1f} "
                     f"{r['horovod_samples_per_sec']:10.1f} {r['ddp_samples_per_sec']:10.1f} "
                     f"{r['hpctrain_vs_horovod']:10.3f}x {_spread(r['hpctrain_vs_horovod_per_round']):>11s} "
                     f"{r['hpctrain_vs_ddp']:7.3f}x {_spread(r['hpctrain_vs_ddp_per_round']):>11s}")
    lines.append(f"samples/s: median of {result['rounds']} interleaved rounds; vs: ratio of the medians; "
                 "(rounds): lowest-highest ratio within one round")
    return "\n".join(lines)


def main(args: Any) -> int:
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    ranks = [int(v) for v in args.ranks.split(",")]
    result = compare(models, ranks, args.rounds, args.steps)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0
