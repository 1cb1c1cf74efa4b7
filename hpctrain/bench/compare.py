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


def _bin(name: str) -> str:
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
        return [*launch, _bin("hpctrain"), "train", *ours], {}
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


def run_once(impl: str, sets: list[str], ranks: int, steps: int, launcher: str = "mpirun") -> float:
    """samples/s of one run (global, post-warm-up, slowest rank)."""
    with tempfile.TemporaryDirectory(prefix="hpctrain-compare-") as tmp:
        cmd, extra = command(impl, sets, ranks, steps, tmp, launcher)
        env = {**os.environ, **extra, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        if impl in OURS:
            return float(json.loads((Path(tmp) / "summary.json").read_text())["samples_per_sec"])
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        return float(json.loads(line)["samples_per_sec"])


def ratios(impls: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(ours, peer) pairs the table gives a ratio for: each of hpctrain's entry points run against each
    peer, and the Python API against the config path when both ran."""
    ours = [i for i in impls if i in OURS]
    return [(o, p) for o in ours for p in impls if p not in OURS] + (
        [("api", "hpctrain")] if len(ours) == 2 else [])


def compare(models: dict[str, list[str]], ranks: list[int], rounds: int, steps: dict[str, int],
            impls: tuple[str, ...] = DEFAULT_IMPLS, launcher: str = "mpirun") -> dict[str, Any]:
    """Every implementation in ``impls`` (hpctrain first) once per round, for each model (name: its
    overrides, see :func:`overrides`; ``steps``: its steps per run) and rank count."""
    raw: dict[str, list[float]] = {}
    width = max([11, *map(len, models)])
    for r in range(rounds):
        for model, sets in models.items():
            for p in ranks:
                # rotated each round: a run is slowed by the teardown of the one before it, so no
                # implementation may always follow the same one
                for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                    rate = run_once(impl, sets, p, steps[model], launcher)
                    raw.setdefault(f"{model}|{p}|{impl}", []).append(rate)
                    print(f"  round {r + 1}/{rounds} {model:{width}s} {p} rank(s) {impl:9s} {rate:10.1f} samples/s",
                          file=sys.stderr, flush=True)
    rows = []
    for model in models:
        for p in ranks:
            runs = {impl: raw[f"{model}|{p}|{impl}"] for impl in impls}
            med = {impl: statistics.median(runs[impl]) for impl in impls}
            row: dict[str, Any] = {"model": model, "ranks": p, **{f"{i}_samples_per_sec": med[i] for i in impls}}
            for ours, peer in ratios(impls):
                row[f"{ours}_vs_{peer}"] = med[ours] / med[peer]
                # per round: the implementations ran back to back, so a round's ratio is free of drift
                # between rounds; their spread says how far one run can be trusted
                row[f"{ours}_vs_{peer}_per_round"] = [a / b for a, b in zip(runs[ours], runs[peer], strict=True)]
            rows.append({**row, "runs": runs})
    return {"rows": rows, "rounds": rounds, "impls": list(impls), "launcher": launcher,
            "steps": dict(steps), "models": {m: list(sets) for m, sets in models.items()},
            "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "gpu": _gpu_name()},
            "command": " ".join(sys.argv), "time": time.time()}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _label(ours: str, peer: str) -> str:
    return f"vs {peer}" if ours == "hpctrain" else f"{ours} vs {peer}"


def format_table(result: dict[str, Any]) -> str:
    impls = result.get("impls", DEFAULT_IMPLS)
    pairs = ratios(impls)
    width = max([11, *(len(r["model"]) for r in result["rows"])])
    cols = [max(11, len(_label(o, p)) + 1) for o, p in pairs]
    lines = [f"{'model':{width}s} {'ranks':>5s} " + " ".join(f"{i:>10s}" for i in impls) + "".join(
        f" {_label(o, p):>{c}s} {'(rounds)':>11s}" for (o, p), c in zip(pairs, cols, strict=True))]
    for r in result["rows"]:
        lines.append(f"{r['model']:{width}s} {r['ranks']:5d} " + " ".join(
            f"{r[f'{i}_samples_per_sec']:10.1f}" for i in impls) + "".join(
            f" {r[f'{o}_vs_{p}']:{c - 1}.3f}x {_spread(r[f'{o}_vs_{p}_per_round']):>11s}"
            for (o, p), c in zip(pairs, cols, strict=True)))
    lines.append(f"samples/s: median of {result['rounds']} interleaved rounds; vs: ratio of the medians; "
                 "(rounds): lowest-highest ratio within one round")
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
    result = compare(models, ranks, args.rounds, steps, impls, args.launcher)
    print(format_table(result))
    if args.json:
        write_atomic(Path(args.json), (json.dumps(result, indent=1) + "\n").encode())
    return 0
