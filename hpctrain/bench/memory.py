"""`hpctrain bench memory`: the largest model each ZeRO stage trains within a per-rank memory budget, and
the same model through PyTorch's own answers side by side.

1. For stage 0, 1 and 2, each with and without activation checkpointing, the deepest built-in transformer
   (width, heads, sequence length and per-rank batch fixed; depth searched) that trains a few AdamW steps
   with every rank's peak memory within ``--budget-mb``: two shallow runs give a first guess (memory is
   close to linear in depth), then bisection between a depth that fits and one that does not.
2. At the smallest depth found (stage 0's, when it was searched: every implementation fits it),
   interleaved rounds of hpctrain at each stage searched against DDP with ``ZeroRedundancyOptimizer`` and
   FSDP2 ``fully_shard`` (gloo on CPU, torchrun): samples/s, peak memory, and
   hpctrain/ZeroRedundancyOptimizer with a paired interval.

The budget is enforced by measurement: peak resident memory (``ru_maxrss``; on a GPU
``torch.cuda.max_memory_allocated``) of the largest rank. Not ``RLIMIT_AS``: PyTorch, Open MPI and Horovod
reserve several times more address space than they touch, so a limit on it says little about memory. Every
run gets the same glibc settings, which hand freed tensors back to the system at once (FRUGAL_MALLOC, and
``run.malloc_keep_mb = 0`` for hpctrain): with hpctrain's default, which keeps freed blocks for reuse, the
heap's high-water mark hides most of what activation checkpointing frees, and peak RSS would measure the
allocator rather than the model.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpctrain import intervals, memory
from hpctrain.bench.compare import mpirun, run_json, venv_bin
from hpctrain.errors import UserError
from hpctrain.files import write_atomic

CONFIGS = [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True)]  # (zero stage, recompute)
PEERS = ("zero", "fsdp")
MIB = 2**20
LR = "optim.lr=0.0005"  # AdamW at a rate these deep, narrow models train at without diverging
FRUGAL_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 10), "MALLOC_TRIM_THRESHOLD_": str(128 << 10)}


@dataclass
class Options:
    budget_mb: float
    ranks: int
    width: int
    heads: int
    seq_len: int
    batch: int
    max_depth: int
    steps: int  # per probe: AdamW state exists after the first, so a few steps reach the peak
    rounds: int  # of the throughput comparison
    compare_steps: int
    peers: tuple[str, ...]


def model_sets(opts: Options, depth: int, recompute: bool) -> list[str]:
    return ["model.name=transformer", f"model.width={opts.width}", f"model.heads={opts.heads}",
            f"model.seq_len={opts.seq_len}", "model.vocab_size=256", f"model.depth={depth}",
            f"train.batch_size={opts.batch}", f"model.activation_checkpointing={str(recompute).lower()}"]


def command(impl: str, stage: int, sets: list[str], opts: Options, steps: int, run_dir: str) -> list[str]:
    """One run: hpctrain at ``stage`` under mpirun, or a peer (``zero``, ``fsdp``) under torchrun."""
    if impl == "hpctrain":
        return [*mpirun(opts.ranks), venv_bin("hpctrain"), "train", *sets, "optim.name=adamw", LR,
                f"optim.zero_stage={stage}", f"train.steps={steps}", "train.untimed_steps=1",
                f"run.log_every={steps}", f"data.samples={opts.batch * opts.ranks * 8}", "run.malloc_keep_mb=0",
                "checkpoint.at_end=false", "checkpoint.resume=never", "run.report=false", "run.tensorboard=false",
                f"run.dir={run_dir}"]
    return [venv_bin("torchrun"), "--standalone", f"--nproc_per_node={opts.ranks}", "-m",
            "hpctrain.bench.peers", impl, "--steps", str(steps), "--warmup", "1", *sets, LR]


def run_once(impl: str, stage: int, sets: list[str], opts: Options, steps: int) -> dict[str, Any]:
    """Peak memory of the largest rank, parameters, samples/s (and for hpctrain the bytes it holds)."""
    with tempfile.TemporaryDirectory(prefix="hpctrain-bench-memory-") as tmp:
        s = run_json(command(impl, stage, sets, opts, steps, tmp), FRUGAL_MALLOC,
                     Path(tmp) if impl == "hpctrain" else None)
    if impl != "hpctrain":
        peak = s.get("cuda_max_allocated_bytes", s["peak_rss_bytes"])
        return {"peak_mib": peak / MIB, "params": s["num_parameters"], "samples_per_sec": s["samples_per_sec"]}
    ranks = s["memory"]["per_rank"]
    peak = max(r.get("cuda_max_allocated_bytes", r["peak_rss_bytes"]) for r in ranks)
    held = max(r["params_bytes"] + r["grads_bytes"] + r["optimizer_state_bytes"] for r in ranks)
    return {"peak_mib": peak / MIB, "params": s["num_parameters"], "samples_per_sec": s["samples_per_sec"],
            "held_mib": held / MIB, "optimizer_state_mib": max(r["optimizer_state_bytes"] for r in ranks) / MIB,
            "formula_mib": s["memory"]["formula"]["bytes_per_rank"] / MIB}


def largest(fits: Callable[[int], bool], guess: int, limit: int) -> int:
    """The largest depth in [1, limit] that ``fits`` (0 if none), for a ``fits`` that holds up to some depth
    and not beyond: a bracket grown from ``guess`` in steps that double, then bisection. Each depth is
    tried at most once (every new one lies strictly between the bracket's ends)."""
    lo, hi = 0, limit + 1  # lo fits (depth 0 trivially), hi does not
    d = min(max(1, guess), limit)
    step = max(1, d // 4)
    if fits(d):
        lo = d
        while lo < limit:
            d = min(limit, lo + step)
            if not fits(d):
                hi = d
                break
            lo, step = d, step * 2
    else:
        hi = d
        while hi > 1:
            d = max(1, hi - step)
            if fits(d):
                lo = d
                break
            hi, step = d, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def first_guess(small: dict[str, Any], large: dict[str, Any], d_small: int, d_large: int, budget_mb: float) -> int:
    """The depth where the line through two runs' peak memory reaches the budget."""
    slope = (large["peak_mib"] - small["peak_mib"]) / (d_large - d_small)
    if slope <= 0:
        return d_large * 2
    return max(1, int(d_small + (budget_mb - small["peak_mib"]) / slope))


def search(stage: int, recompute: bool, opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """The deepest model this configuration trains within the budget, with its run's figures."""
    runs: dict[int, dict[str, Any]] = {}

    def probe(depth: int) -> dict[str, Any]:
        if depth not in runs:
            runs[depth] = run_once("hpctrain", stage, model_sets(opts, depth, recompute), opts, opts.steps)
            r = runs[depth]
            log(f"  stage {stage}{' +ac' if recompute else '    '} depth {depth:4d}: peak {r['peak_mib']:7.0f} MiB "
                f"{'fits' if r['peak_mib'] <= opts.budget_mb else 'over'}")
        return runs[depth]

    d1, d2 = min(2, opts.max_depth), min(8, opts.max_depth)
    guess = first_guess(probe(d1), probe(d2), d1, d2, opts.budget_mb) if d2 > d1 else d1
    depth = largest(lambda d: probe(d)["peak_mib"] <= opts.budget_mb, guess, opts.max_depth)
    row = {"stage": stage, "recompute": recompute, "depth": depth, "probes": {str(d): r["peak_mib"] for d, r in
                                                                                sorted(runs.items())}}
    if depth:
        row.update(runs[depth])
    return row


def compare_at(depth: int, stages: list[int], opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """hpctrain at ``stages`` and the peers on one model, interleaved rounds (order rotated each round)."""
    impls = [*[(f"hpctrain z{s}", "hpctrain", s) for s in stages], *[(p, p, 0) for p in opts.peers]]
    sets = model_sets(opts, depth, False)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(opts.rounds):
        for label, impl, stage in impls[r % len(impls):] + impls[:r % len(impls)]:
            run = run_once(impl, stage, sets, opts, opts.compare_steps)
            runs.setdefault(label, []).append(run)
            log(f"  round {r + 1}/{opts.rounds} {label:12s} {run['samples_per_sec']:8.1f} samples/s  "
                f"peak {run['peak_mib']:6.0f} MiB")
    rows = [{"impl": label, "params": runs[label][0]["params"],
             "samples_per_sec": statistics.median(x["samples_per_sec"] for x in runs[label]),
             "peak_mib": statistics.median(x["peak_mib"] for x in runs[label]),
             "samples_per_sec_each_round": [x["samples_per_sec"] for x in runs[label]]} for label, _, _ in impls]
    return {"depth": depth, "rows": with_ratios(rows)}


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each hpctrain row's samples/s against ZeroRedundancyOptimizer's (``vs_zero``) and against hpctrain's
    own stage 0 (``vs_z0``), paired round by round."""
    rounds = {r["impl"]: r["samples_per_sec_each_round"] for r in rows}
    for r in rows:
        if not r["impl"].startswith("hpctrain"):
            continue
        for key, peer in (("vs_zero", "zero"), ("vs_z0", "hpctrain z0")):
            if peer in rounds and peer != r["impl"]:
                r[key] = intervals.paired_ratio(rounds[r["impl"]], rounds[peer]).as_dict()
    return rows


def format_tables(result: dict[str, Any]) -> str:
    o = result["options"]
    lines = [f"Largest transformer within {o['budget_mb']:.0f} MiB per rank, {o['ranks']} ranks (width {o['width']}, "
             f"{o['heads']} heads, sequence {o['seq_len']}, batch {o['batch']} per rank, AdamW; depth searched)",
             f"{'stage':<6}{'recompute':>10}{'depth':>7}{'params':>13}{'peak MiB':>10}{'held MiB':>10}"
             f"{'formula MiB':>13}{'opt MiB':>9}{'samples/s':>11}{'x stage 0':>11}"]
    base = next((r["params"] for r in result["largest"] if r["stage"] == 0 and not r["recompute"] and r["depth"]), 0)
    for r in result["largest"]:
        if not r["depth"]:
            lines.append(f"{r['stage']:<6}{'yes' if r['recompute'] else 'no':>10}{'none fits':>7}")
            continue
        lines.append(f"{r['stage']:<6}{'yes' if r['recompute'] else 'no':>10}{r['depth']:>7}{r['params']:>13,}"
                     f"{r['peak_mib']:>10.0f}{r['held_mib']:>10.1f}{r['formula_mib']:>13.1f}"
                     f"{r['optimizer_state_mib']:>9.1f}{r['samples_per_sec']:>11.1f}"
                     f"{(r['params'] / base if base else float('nan')):>10.2f}x")
    c = result["compare"]
    if c:
        lines += ["", f"Throughput and peak memory at depth {c['depth']} (the smallest largest model above), "
                      f"{o['rounds']} interleaved round(s) of {o['compare_steps']} steps",
                  f"{'implementation':<16}{'params':>13}{'samples/s':>11}{'peak MiB':>10}{'vs zero':>9}"
                  f"{'(CI)':>12}{'verdict':>9}{'vs z0':>9}{'(CI)':>12}{'verdict':>9}"]
        for r in c["rows"]:
            cells = ""
            for key in ("vs_zero", "vs_z0"):
                ci = r.get(key)
                cells += (f"{ci['estimate']:>8.3f}x{intervals.range_text(ci):>12}{ci['verdict']:>9}" if ci
                          else " " * 30)
            lines.append(f"{r['impl']:<16}{r['params']:>13,}{r['samples_per_sec']:>11.1f}{r['peak_mib']:>10.0f}"
                         f"{cells.rstrip()}")
        lines.append(f"zero: DDP + torch.distributed.optim.ZeroRedundancyOptimizer(AdamW); fsdp: FSDP2 fully_shard "
                     f"per layer (parameters sharded too). {intervals.describe()}")
    lines.append("peak: the largest rank's peak resident memory (ru_maxrss; on a GPU torch.cuda.max_memory_allocated); "
                 "held: parameters + gradients + optimizer state it held; formula: the ZeRO paper's bytes per "
                 "parameter for the stage (hpctrain.memory) times the parameters")
    return "\n".join(lines)


def add_arguments(parser: Any) -> None:
    # defaults: the committed run (scaling_studies/results/bench-memory.txt): a budget a few hundred MiB above
    # the ~340 MiB the runtime takes per rank, and a narrow model whose activations outweigh its state
    parser.add_argument("--budget-mb", type=float, default=448.0,
                        help="peak memory per rank a model must stay within (MiB; default 448)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="per rank")
    parser.add_argument("--max-depth", type=int, default=512, help="the deepest model tried")
    parser.add_argument("--steps", type=int, default=3, help="steps of each probe run")
    parser.add_argument("--configs", default="0,0ac,1,1ac,2,2ac",
                        help="stages to search, 'ac' for activation checkpointing (default all six)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the throughput comparison (0: none)")
    parser.add_argument("--compare-steps", type=int, default=10)
    parser.add_argument("--peers", default=",".join(PEERS), help="PyTorch's implementations compared: zero,fsdp")
    parser.add_argument("--out", default=None, help="write the result as JSON here (and the table beside, .txt)")


def parse_configs(text: str) -> list[tuple[int, bool]]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        stage, ac = item.removesuffix("ac"), item.endswith("ac")
        if stage not in ("0", "1", "2"):
            raise UserError(f"--configs: {item!r} is not a stage 0, 1 or 2 (with 'ac' for activation "
                            f"checkpointing), e.g. --configs 0,2ac")
        out.append((int(stage), ac))
    if not out:
        raise UserError("--configs: give at least one stage, e.g. --configs 0,2ac")
    return out


def main(args: Any) -> int:
    configs = parse_configs(args.configs)
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if bad := [p for p in peers if p not in PEERS]:
        raise UserError(f"--peers: unknown {', '.join(bad)}; choose from {', '.join(PEERS)}")
    if args.budget_mb <= 0 or args.ranks < 1 or args.max_depth < 1 or args.steps < 2:
        raise UserError("--budget-mb, --ranks, --max-depth must be positive and --steps at least 2")
    if args.out and not os.access(Path(args.out).resolve().parent, os.W_OK):
        raise UserError(f"--out {args.out}: its directory is not writable; choose another path")
    opts = Options(args.budget_mb, args.ranks, args.width, args.heads, args.seq_len, args.batch, args.max_depth,
                   args.steps, args.rounds, args.compare_steps, peers)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    found = [search(stage, ac, opts, log) for stage, ac in configs]
    depths = [r["depth"] for r in found if r["depth"]]
    stages = sorted({stage for stage, _ in configs})
    comparison = compare_at(min(depths), stages, opts, log) if depths and opts.rounds > 0 else None
    result = {"options": vars(opts) | {"peers": list(peers)}, "largest": found, "compare": comparison,
              "formula_bytes_per_param": {str(s): memory.formula_bytes_per_param(s, 2, opts.ranks) for s in (0, 1, 2)},
              "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()[0]},
              "command": " ".join(["hpctrain", *sys.argv[1:]]), "time": time.time()}
    text = format_tables(result)
    print(text)
    if args.out:
        write_atomic(Path(args.out), json.dumps(result, indent=1).encode())
        write_atomic(Path(args.out).with_suffix(".txt"), f"# {result['command']}\n{text}\n".encode())
    return 0
