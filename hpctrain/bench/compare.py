"""`hpctrain bench compare`: hpctrain against a minimal raw Horovod loop and PyTorch DDP (torchrun), side by side
(and, with ``--impls hpctrain,torch``, against a plain one-process PyTorch loop: the one-GPU comparison).

The same model, synthetic data, per-rank batch, threads per rank and SGD kernel for all of them; runs
interleaved (every implementation once per round, in an order rotated each round, rounds repeated) so
drifting machine load hits all of them alike; the median of the rounds is reported with the ratios
hpctrain/peer, and with the lowest and highest ratio within a single round. Models: a communication-heavy
MLP (large dense layers, ~21M parameters), a compute-heavy CNN (convolutions) and a small Transformer, and
a user's own model by import path (``--model package.module:callable`` with ``--model-args`` and ``--set``
for what its synthetic samples look like).

``--impls hpctrain,api,...`` adds hpctrain through the Python API: a user's script
(``hpctrain/bench/api_script.py``) that builds the model object itself and hands it to ``hpctrain.fit``,
launched as the raw Horovod loop is; the table then has its ratios to each peer too.
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

from hpctrain import config as config_mod
from hpctrain import intervals
from hpctrain.config import RunConfig, load
from hpctrain.errors import UserError
from hpctrain.files import write_atomic
from hpctrain.launchers import mpirun_command
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
USER_STEPS = 200  # a user's model: its step time is unknown here, so --steps is the way to aim at ~10 s
DEFAULT_MODELS = "mlp-21m,cnn"
IMPLS = ("hpctrain", "api", "horovod", "ddp", "torch")
OURS = ("hpctrain", "api")  # hpctrain's two entry points; the others are the peers their ratios are taken to
DEFAULT_IMPLS = ("hpctrain", "horovod", "ddp")  # the plain torch loop only on request: it runs one process
# What --set may change for a --model: only keys every implementation reads the same way (the peers build
# the model and synthetic samples from these and nothing else), so that no setting differs between them.
USER_KEYS = ("model.args.", "data.sample_shape", "data.sample_kind", "data.num_classes", "train.batch_size",
             "train.seed")


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mpirun(ranks: int) -> list[str]:
    # dist: the same launch for hpctrain and raw Horovod. yield_when_idle: hpctrain's own default on CPU
    # (comm.yield_when_idle), given to the raw loop too so the comparison measures the framework, not MPI.
    # dist: a user's model module must import on every rank; local ranks inherit the variable anyway, -x
    # carries it to ranks on other nodes too
    path = ["-x", "PYTHONPATH"] if os.environ.get("PYTHONPATH") else []
    return mpirun_command(ranks, *path, "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1")


def user_model(path: str, model_args: str | None = None, sets: list[str] | None = None) -> tuple[str, ...]:
    """The overrides of a user's model given by import path: ``model.name``, its arguments (``k=v,k=v`` with
    TOML values, or a JSON object) as ``model.args.*``, then ``--set`` overrides (USER_KEYS only)."""
    if not config_mod.is_import_path(path):
        raise UserError(f"--model: expected an import path package.module:callable, got {path!r} "
                        f"(the built-in {', '.join(MODELS)} go in --models)")
    args = [f"model.args.{k}" for k in parse_model_args(model_args)] if model_args else []
    for text in sets or []:
        key = text.split("=", 1)[0].strip()
        if "=" not in text or not any(key.startswith(k) if k.endswith(".") else key == k for k in USER_KEYS):
            keys = ", ".join(k + ("KEY" if k.endswith(".") else "") for k in USER_KEYS)
            raise UserError(f"--set: expected KEY=VALUE with KEY one of {keys} (the keys every implementation "
                            f"reads alike), got {text!r}")
    return (f"model.name={path}", *args, *(sets or []))


def parse_model_args(text: str) -> list[str]:
    """``KEY=VALUE`` strings from ``--model-args``: ``k=v,k=v`` (each value read as a TOML value, as
    model.args.KEY=VALUE overrides are) or a JSON object (for lists and strings with commas)."""
    if text.lstrip().startswith("{"):
        try:
            given = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--model-args: not a valid JSON object ({e})") from None
        if not isinstance(given, dict):
            raise UserError("--model-args: expected a JSON object {\"key\": value, ...}")
        try:
            return [f"{k}={config_mod._toml_value(v)}" for k, v in given.items()]
        except TypeError:
            raise UserError("--model-args: values must be numbers, strings, booleans, lists or objects "
                            "(not null)") from None
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0].strip().isidentifier()]
    if bad or not pairs:
        raise UserError(f"--model-args: expected key=value,key=value or a JSON object, got {text!r}")
    return pairs


def overrides(model: str, batch: int | None, user: tuple[str, ...] = ()) -> list[str]:
    """The `hpctrain train` overrides of one model: a built-in benchmark model's, or (``user``, from
    :func:`user_model`) a user's, whose own --set train.batch_size is applied after --batch."""
    return [*(MODELS[model] if model in MODELS else ()), *([f"train.batch_size={batch}"] if batch else []), *user]


def api_overrides(sets: list[str]) -> list[str]:
    """``sets`` plus what hpctrain.fit needs to make the same synthetic samples for a built-in model handed
    over as an object: fit cannot know its sample shape from the object, so the script's config says it."""
    from hpctrain import models
    from hpctrain.bench.peers import sample_shape

    cfg = load(None, sets)
    if not models.is_builtin(cfg.model.name) or cfg.data.sample_shape:
        return sets
    shape = sample_shape(cfg)
    return [*sets, f"data.sample_shape=[{','.join(map(str, shape.input_shape))}]",
            f"data.sample_kind={'tokens' if shape.tokens else 'classes'}", f"data.num_classes={shape.num_classes}"]


def command(impl: str, sets: list[str], ranks: int, steps: int, run_dir: str,
            launcher: str = "mpirun") -> tuple[list[str], dict[str, str]]:
    """The command line of one run of the model that ``sets`` (see :func:`overrides`) describes, and the
    variables to add to its environment. ``launcher`` "direct": one plain process (1 rank), for machines
    without MPI such as a one-GPU box."""
    per_rank = load(None, sets).train.batch_size
    launch = mpirun(ranks) if launcher == "mpirun" else []
    if impl in OURS:
        # the same overrides for both entry points: the config path and the Python API differ in nothing else
        ours = [*(api_overrides(sets) if impl == "api" else sets), f"train.steps={steps}", "optim.lr=0.01",
                f"run.dir={run_dir}", "checkpoint.at_end=false", "checkpoint.resume=never",
                f"run.log_every={steps}", f"data.samples={per_rank * ranks * 8}"]
        if impl == "api":
            return [*launch, sys.executable, "-m", "hpctrain.bench.api_script", *ours], {}
        return [*launch, venv_bin("hpctrain"), "train", *ours], {}
    peer = ["-m", "hpctrain.bench.peers", impl, "--steps", str(steps), *sets, "optim.lr=0.01"]
    if impl == "horovod":
        # identical settings: also hpctrain's default run.malloc_keep_mb, as glibc's variables
        mmap_bytes, trim_bytes = malloc_thresholds(RunConfig().malloc_keep_mb)
        env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_bytes), "MALLOC_TRIM_THRESHOLD_": str(trim_bytes)}
        passed = [a for k in env for a in ("-x", k)] if launch else []
        return [*launch, *passed, sys.executable, *peer], env
    if impl == "ddp":
        return [venv_bin("torchrun"), "--standalone", f"--nproc_per_node={ranks}", *peer], {}
    return [sys.executable, *peer], {}


def run_json(cmd: list[str], extra_env: dict[str, str], run_dir: Path | None) -> dict[str, Any]:
    """Run one benchmark command to its end; its figures: ``run_dir``'s summary.json (an hpctrain run), or
    the last JSON line it printed (a peer). A failed run raises, with the end of its stderr."""
    env = {**os.environ, **extra_env, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    if run_dir is not None:
        return json.loads((run_dir / "summary.json").read_text())
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def run_once(impl: str, sets: list[str], ranks: int, steps: int, launcher: str = "mpirun") -> dict[str, Any]:
    """One run's figures: samples/s (global, post-warm-up, slowest rank), CPU seconds per sample and
    involuntary context switches per step (means over ranks), step-time percentiles (ms, slowest rank),
    and the machine's 1-minute load average as the run started (what else was running)."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hpctrain-compare-") as tmp:
        cmd, extra = command(impl, sets, ranks, steps, tmp, launcher)
        out = run_json(cmd, extra, Path(tmp) if impl in OURS else None)
    return {"samples_per_sec": float(out["samples_per_sec"]),
            "cpu_s_per_sample": float(out["cpu_s_per_sample"]["mean"]),
            "involuntary_switches_per_step": float(out["involuntary_switches_per_step"]["mean"]),
            "step_ms_percentiles": out["step_ms_percentiles"], "load": load_before}


def ratios(impls: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(ours, peer) pairs the table gives a ratio for: each of hpctrain's entry points run against each
    peer, and the Python API against the config path when both ran."""
    ours = [i for i in impls if i in OURS]
    return [(o, p) for o in ours for p in impls if p not in OURS] + (
        [("api", "hpctrain")] if len(ours) == 2 else [])


def point_intervals(runs: dict[str, list[dict[str, Any]]], impls: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The paired intervals of one (model, ranks) point: for each (ours, peer) pair, samples/s ours/peer
    (higher is better) and CPU seconds per sample ours/peer (lower is better), from its rounds so far."""
    out = {}
    for ours, peer in ratios(impls):
        a, b = runs[ours], runs[peer]
        out[f"{ours}_vs_{peer}"] = intervals.paired_ratio([r["samples_per_sec"] for r in a],
                                                      [r["samples_per_sec"] for r in b])
        out[f"{ours}_vs_{peer}_cpu"] = intervals.paired_ratio([r["cpu_s_per_sample"] for r in a],
                                                          [r["cpu_s_per_sample"] for r in b], higher_is_better=False)
    return out


def narrow_enough(raw: dict[str, dict[str, list[dict[str, Any]]]], impls: tuple[str, ...], target: float) -> bool:
    """--until-ci: every samples/s ratio's interval within +-``target`` of its estimate."""
    return all(ci.half_width <= target for runs in raw.values()
               for key, ci in point_intervals(runs, impls).items() if not key.endswith("_cpu"))


MIN_CI_ROUNDS = 3  # --until-ci never stops on fewer: two rounds' spread can be small by chance


def compare(models: dict[str, list[str]], ranks: list[int], rounds: int, steps: dict[str, int],
            impls: tuple[str, ...] = DEFAULT_IMPLS, launcher: str = "mpirun", until_ci: float | None = None,
            max_rounds: int = 0) -> dict[str, Any]:
    """Every implementation in ``impls`` (hpctrain first) once per round, for each model (name: its
    overrides, see :func:`overrides`; ``steps``: its steps per run) and rank count: ``rounds`` rounds, or
    with ``until_ci`` as many more (up to ``max_rounds``) as it takes every samples/s ratio's interval to
    come within +-until_ci of its estimate."""
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}  # "model|ranks": impl: one dict per round
    width = max([11, *map(len, models)])
    limit = max(rounds, max_rounds) if until_ci is not None else rounds
    r = 0
    interrupted = False
    try:
        while r < limit:
            for model, sets in models.items():
                for p in ranks:
                    # rotated each round: a run is slowed by the teardown of the one before it, so no
                    # implementation may always follow the same one
                    for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                        run = run_once(impl, sets, p, steps[model], launcher)
                        raw.setdefault(f"{model}|{p}", {}).setdefault(impl, []).append(run)
                        print(f"  round {r + 1}/{limit} {model:{width}s} {p} rank(s) {impl:9s} "
                              f"{run['samples_per_sec']:10.1f} samples/s  {run['cpu_s_per_sample'] * 1000:7.3f} "
                              f"CPU ms/sample  {run['involuntary_switches_per_step']:6.1f} invol/step  "
                              f"load {run['load']:.1f}", file=sys.stderr, flush=True)
            r += 1
            if until_ci is not None and r >= max(rounds, MIN_CI_ROUNDS) and narrow_enough(raw, impls, until_ci):
                break
    except KeyboardInterrupt:  # Ctrl-C on a long run: keep the rounds that finished
        if r == 0:
            raise
        interrupted = True
        print(f"  interrupted: reporting the {r} complete round(s)", file=sys.stderr, flush=True)
        raw = {k: {i: runs[:r] for i, runs in point.items()} for k, point in raw.items()}
    rows = [summarise_point(model, p, raw[f"{model}|{p}"], impls) for model in models for p in ranks]
    loads = [run["load"] for point in raw.values() for runs in point.values() for run in runs]
    return {"rows": rows, "rounds": r, "interrupted": interrupted, "impls": list(impls), "launcher": launcher,
            "until_ci": until_ci, "max_rounds": limit if until_ci is not None else None,
            "ci_reached": narrow_enough(raw, impls, until_ci) if until_ci is not None else None,
            "load": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
            "steps": dict(steps), "models": {m: list(sets) for m, sets in models.items()},
            "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "gpu": _gpu_name()},
            "command": " ".join(sys.argv), "time": time.time()}


def summarise_point(model: str, ranks: int, runs: dict[str, list[dict[str, Any]]],
                    impls: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """One table row: medians over the rounds per implementation, ratios of the medians, per-round ratios
    and their intervals (:func:`point_intervals`)."""
    rates = {i: [run["samples_per_sec"] for run in runs[i]] for i in impls}
    med = {i: statistics.median(rates[i]) for i in impls}
    row: dict[str, Any] = {"model": model, "ranks": ranks, **{f"{i}_samples_per_sec": med[i] for i in impls}}
    for i in impls:
        row[f"{i}_cpu_ms_per_sample"] = statistics.median(run["cpu_s_per_sample"] for run in runs[i]) * 1000
        row[f"{i}_involuntary_switches_per_step"] = statistics.median(
            run["involuntary_switches_per_step"] for run in runs[i])
        row[f"{i}_step_ms"] = {p: statistics.median(run["step_ms_percentiles"][p] for run in runs[i])
                               for p in runs[i][0]["step_ms_percentiles"]}
    for ours, peer in ratios(impls):
        row[f"{ours}_vs_{peer}"] = med[ours] / med[peer]
        row[f"{ours}_vs_{peer}_cpu"] = row[f"{ours}_cpu_ms_per_sample"] / row[f"{peer}_cpu_ms_per_sample"]
        # per round: the implementations ran back to back, so a round's ratio is free of drift between
        # rounds; their spread says how far one run can be trusted
        row[f"{ours}_vs_{peer}_per_round"] = [a / b for a, b in zip(rates[ours], rates[peer], strict=True)]
    row.update({f"{k}_ci": ci.as_dict() for k, ci in point_intervals(runs, impls).items()})
    return {**row, "runs": rates, "usage": {i: runs[i] for i in impls}}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _label(ours: str, peer: str) -> str:
    return f"vs {peer}" if ours == "hpctrain" else f"{ours} vs {peer}"


def _ci_cells(ci: dict[str, Any]) -> str:
    return f"{intervals.range_text(ci):>11s} {ci['verdict']:>7s}"


def _table(result: dict[str, Any], cell: str, suffix: str, title: str) -> list[str]:
    """One table: a column per implementation (``cell``: the row key after ``impl_``), then per pair the
    ratio of the medians (``ours_vs_peer<suffix>``), its paired interval and verdict (``..._ci``)."""
    impls = result.get("impls", DEFAULT_IMPLS)
    pairs = ratios(impls)
    width = max([11, *(len(r["model"]) for r in result["rows"])])
    cols = [max(11, len(_label(o, p)) + 1) for o, p in pairs]
    digits = 1 if cell == "samples_per_sec" else 3
    lines = [title, f"{'model':{width}s} {'ranks':>5s} " + " ".join(f"{i:>10s}" for i in impls) + "".join(
        f" {_label(o, p):>{c}s} {'95% CI':>11s} {'verdict':>7s}" for (o, p), c in zip(pairs, cols, strict=True))]
    for r in result["rows"]:
        lines.append(f"{r['model']:{width}s} {r['ranks']:5d} " + " ".join(
            f"{r[f'{i}_{cell}']:10.{digits}f}" for i in impls) + "".join(
            f" {r[f'{o}_vs_{p}{suffix}']:{c - 1}.3f}x {_ci_cells(r[f'{o}_vs_{p}{suffix}_ci'])}"
            for (o, p), c in zip(pairs, cols, strict=True)))
    return lines


def format_table(result: dict[str, Any]) -> str:
    lines = _table(result, "samples_per_sec", "", "samples/s (higher is better)")
    n = result["rounds"]
    cut = " (interrupted: the complete rounds only)" if result.get("interrupted") else ""
    lines.append(f"samples/s: median of {n} interleaved round{'s' * (n != 1)}{cut}; vs: ratio of the medians; "
                 + intervals.describe())
    if all("hpctrain_cpu_ms_per_sample" in r for r in result["rows"]):
        lines += ["", *_table(result, "cpu_ms_per_sample", "_cpu",
                              "CPU ms per sample per rank (user+system, every thread; lower is better)")]
        lines.append("CPU: medians of the rounds; vs: ratio of the medians ours/peer; ahead = less CPU per sample")
        lines += ["", "step time p10/p50/p90 (ms, slowest rank) and involuntary context switches per step "
                      "(mean over ranks), medians of the rounds"]
        impls = result.get("impls", DEFAULT_IMPLS)
        width = max([11, *(len(r["model"]) for r in result["rows"])])
        lines.append(f"{'model':{width}s} {'ranks':>5s} " + " ".join(f"{i:>24s}" for i in impls))
        for r in result["rows"]:
            lines.append(f"{r['model']:{width}s} {r['ranks']:5d} " + " ".join(
                f"{'/'.join(f'{v:.1f}' for v in r[f'{i}_step_ms'].values()):>15s} "
                f"{r[f'{i}_involuntary_switches_per_step']:6.1f}cs" for i in impls))
    if result.get("load"):
        load = result["load"]
        lines.append(f"machine load (1-min average as each run started): {load['min']:.1f}-{load['max']:.1f}, "
                     f"median {load['median']:.1f}, on {result.get('host', {}).get('cpus', '?')} CPUs")
    if result.get("until_ci") is not None:
        reached = "reached" if result["ci_reached"] else f"NOT reached in {result['rounds']} rounds"
        lines.append(f"--until-ci {result['until_ci']}: every samples/s interval within +-{result['until_ci']} "
                     f"of its estimate: {reached}")
    return "\n".join(lines)


def check_impls(impls: tuple[str, ...], ranks: list[int], launcher: str) -> None:
    """Refuse a matrix that cannot run, before the first of its runs."""
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or impls[:1] != ("hpctrain",) or len(set(impls)) != len(impls):
        raise UserError(f"--impls: hpctrain first, then any of {', '.join(IMPLS[1:])}, each once "
                        f"(got {','.join(impls)})")
    if ("torch" in impls or launcher == "direct") and ranks != [1]:
        raise UserError("--ranks: the plain torch loop and --launcher direct run one process: use --ranks 1")


def check_user_model(sets: tuple[str, ...]) -> None:
    """A user's model imports here and its synthetic samples are described, before the first run: one line
    now instead of a traceback from every rank of every run."""
    from hpctrain import components
    from hpctrain.bench.peers import sample_shape

    cfg = load(None, list(sets))  # the config's own checks of the --model-args and --set values
    components.resolve(cfg.model.name, "--model")
    try:
        sample_shape(cfg)
    except UserError as e:
        raise UserError(f"--set: {e} (e.g. --set data.sample_shape=[3,32,32] --set data.num_classes=10)") from None


def add_arguments(parser: Any) -> None:
    parser.add_argument("--models", help="comma list of mlp-21m, cnn, transformer (default mlp-21m,cnn; none when "
                                     "--model is given)")
    parser.add_argument("--model", metavar="MODULE:CALLABLE", help="a model of your own by import path (its "
                    "directory on PYTHONPATH), built with --model-args, its synthetic samples from --set; run "
                    "beside the --models named, else alone")
    parser.add_argument("--model-args", metavar="K=V,K=V", help="--model's keyword arguments: key=value,key=value "
                    "(TOML values) or a JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="for --model, repeatable: data.sample_shape=[3,32,32], data.sample_kind=classes|tokens, "
                         "data.num_classes=N, train.batch_size=N (after --batch), train.seed=N, model.args.K=V")
    parser.add_argument("--ranks", default="1,2", help="comma list of rank counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--until-ci", type=float, metavar="W", help="after --rounds (at least 3), add rounds until "
                        "every samples/s ratio's 95%% interval is within +-W of its estimate (e.g. 0.03)")
    parser.add_argument("--max-rounds", type=int, default=20, help="with --until-ci: stop after this many rounds")
    parser.add_argument("--steps", type=int, help="steps per run (default: mlp-21m 150, cnn 500, transformer 100, "
                                               "--model 200; the first 5 steps are not timed)")
    parser.add_argument("--impls", help="hpctrain first, then api (hpctrain.fit from a script, mpirun) and peers: "
                                    "horovod (raw loop, mpirun), ddp (torchrun), torch (plain loop, one process); "
                                    "default hpctrain,horovod,ddp")
    parser.add_argument("--launcher", default="mpirun", choices=["mpirun", "direct"],
                    help="how hpctrain and the raw Horovod loop start: mpirun, or direct (one process, no MPI "
                         "launcher; --ranks 1)")
    parser.add_argument("--batch", type=int, help="per-rank batch for every model (default: each model's own)")
    parser.add_argument("--json", help="also write the results to this file")


def main(args: Any) -> int:
    model_path = args.model
    if (args.model_args or args.set) and not model_path:
        raise UserError("--model-args and --set describe a model of your own: name it with --model "
                        "package.module:callable")
    names = args.models or ("" if model_path else DEFAULT_MODELS)
    builtin = [m for m in names.split(",") if m]
    unknown = [m for m in builtin if m not in MODELS]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)} (a model of your "
                        "own: --model package.module:callable)")
    models = {m: overrides(m, args.batch) for m in builtin}
    steps = {m: args.steps or STEPS[m] for m in builtin}
    if model_path:
        user = user_model(model_path, args.model_args, args.set)
        check_user_model((*overrides(model_path, args.batch, user),))
        models[model_path] = overrides(model_path, args.batch, user)
        steps[model_path] = args.steps or USER_STEPS
    ranks = [int(v) for v in args.ranks.split(",")]
    impls = tuple(args.impls.split(",")) if args.impls else DEFAULT_IMPLS
    check_impls(impls, ranks, args.launcher)
    if args.until_ci is not None and not 0 < args.until_ci < 1:
        raise UserError(f"--until-ci {args.until_ci}: expected a half-width between 0 and 1 (e.g. 0.03: +-3%)")
    if args.rounds < 1 or args.max_rounds < 1:
        raise UserError("--rounds and --max-rounds must be >= 1")
    result = compare(models, ranks, args.rounds, steps, impls, args.launcher, args.until_ci, args.max_rounds)
    print(format_table(result))
    if args.json:
        write_atomic(Path(args.json), (json.dumps(result, indent=1) + "\n").encode())
    return 0
