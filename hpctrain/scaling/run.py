"""`hpctrain scaling run`: the same training at each rank count, locally under mpirun or as Slurm jobs,
one JSON record per run appended to a records file (read by `hpctrain scaling report`).

weak:   the per-rank batch (train.batch_size) stays as configured; the global batch grows with the ranks.
strong: the global batch stays ``global_batch``; each rank gets global_batch / ranks.

With ``nodes`` (Slurm launchers only) each point is a (nodes, ranks) pair: every rank count that divides evenly
over that many nodes. Equal rank counts on one node and on several then differ only in where the ranks are, which
is how the report tells the cost within a node from the cost between nodes.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpctrain import config as config_mod
from hpctrain.errors import UserError
from hpctrain.launchers import mpirun_command
from hpctrain.slurm import template_path


class StudyError(UserError):
    """A study cannot run as asked; the message names the option."""


def batch_for(mode: str, ranks: int, per_rank: int, global_batch: int) -> int:
    if mode == "weak":
        return per_rank
    if global_batch % ranks:
        raise StudyError(f"--global-batch {global_batch} does not divide evenly over {ranks} ranks")
    return global_batch // ranks


LAUNCHERS = ("mpirun", "sbatch", "srun")


@dataclass(frozen=True)
class Study:
    """One weak or strong scaling study: what `hpctrain scaling run` was asked."""

    mode: str  # weak | strong
    ranks: list[int]
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    global_batch: int | None = None  # strong: split over the ranks (default: train.batch_size x max ranks)
    repeats: int = 1
    launcher: str = "mpirun"  # mpirun: this machine; sbatch: one job per point; srun: steps of this allocation
    nodes: list[int] = field(default_factory=lambda: [1])  # node counts; above 1 only through Slurm


def points(study: Study) -> list[tuple[int, int]]:
    """(nodes, ranks) of each run, in order: node counts as given, and for each the rank counts that spread
    evenly over its nodes (a node with fewer ranks than the others would make the slowest rank a placement
    artefact)."""
    if not study.nodes or min(study.nodes) < 1:
        raise StudyError(f"--nodes: expected positive node counts, got {study.nodes}")
    out = []
    for n in study.nodes:
        fits = [p for p in study.ranks if p >= n and p % n == 0]
        if not fits:
            raise StudyError(f"--nodes {n}: none of --ranks {','.join(map(str, study.ranks))} spreads evenly "
                             f"over {n} nodes; add a multiple of {n}")
        out += [(n, p) for p in fits]
    return out


def hpctrain_bin() -> str:
    """The `hpctrain` each point runs: HPCTRAIN_BIN as slurm/train.sbatch reads it (a site wrapper, a
    container), else the one beside this Python."""
    return os.environ.get("HPCTRAIN_BIN") or str(Path(sys.executable).parent / "hpctrain")


def launch(ranks: int, train_args: list[str], launcher: str, log_dir: Path, nodes: int = 1) -> list[str]:
    hpctrain = hpctrain_bin()
    if launcher == "sbatch":
        if shutil.which("sbatch") is None:
            raise StudyError("--launcher sbatch: sbatch not found (on a login node, or after slurm/local/up.sh "
                             "with SLURM_CONF)")
        # --wait: sbatch returns when the job ends, with its exit code; the batch script is the one users submit
        return ["sbatch", "--wait", "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={ranks // nodes}",
                "--overcommit", "--job-name=hpctrain-scaling",
                f"--output={log_dir}/slurm-%j.out", str(template_path("train.sbatch")), *train_args]
    if launcher == "srun":
        # --exact: each step takes only the CPUs it asks for, so a 1-rank point is not spread over the allocation
        return ["srun", "--mpi=pmix", f"--ntasks={ranks}", *(
                    [f"--nodes={nodes}", f"--ntasks-per-node={ranks // nodes}"] if nodes > 1 else []), "--exact",
                f"--cpu-bind={os.environ.get('HPCTRAIN_CPU_BIND', 'cores')}", "--kill-on-bad-exit=1",
                hpctrain, "train", *train_args]
    return mpirun_command(ranks, hpctrain, "train", *train_args)


def check_launcher(study: Study, env: dict[str, str]) -> None:
    if study.launcher not in LAUNCHERS:
        raise StudyError(f"--launcher: {study.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if max(study.nodes) > 1 and study.launcher == "mpirun":
        raise StudyError(f"--nodes {max(study.nodes)}: mpirun runs every point on this machine; spread ranks over "
                         "nodes with --launcher sbatch (or --slurm), or srun inside an allocation")
    if study.launcher == "srun":
        if "SLURM_JOB_ID" not in env or shutil.which("srun") is None:
            raise StudyError("--launcher srun runs the points as steps of a Slurm allocation: use it inside "
                             "sbatch or salloc (slurm/scaling.sbatch does), or use --launcher sbatch")
        tasks = int(env.get("SLURM_NTASKS", "1"))
        if max(study.ranks) > tasks:
            raise StudyError(f"--ranks {max(study.ranks)}: the allocation has {tasks} tasks (SLURM_NTASKS); "
                             "ask sbatch for more or drop the larger rank counts")
        have = int(env.get("SLURM_JOB_NUM_NODES", "1"))
        if max(study.nodes) > have:
            raise StudyError(f"--nodes {max(study.nodes)}: the allocation has {have} node(s) "
                             "(SLURM_JOB_NUM_NODES); ask sbatch for more or drop the larger node counts")


def record(mode: str, summary: dict[str, Any], command: list[str]) -> dict[str, Any]:
    keep = ("world_size", "samples_per_sec", "samples_per_sec_per_rank", "step_time_ms", "breakdown_ms",
            "batch_size", "global_batch_size", "model", "num_parameters", "compression", "launcher",
            "threads_per_rank", "cpu_s_per_sample", "involuntary_switches_per_step", "step_ms_percentiles",
            "hosts")
    placement = {}
    if summary.get("hosts"):  # where the ranks ran, not what was asked: a scheduler may place them otherwise
        placement = {"nodes": len(summary["hosts"]), "ranks_per_node": max(summary["hosts"].values())}
    return {"mode": mode, **{k: summary[k] for k in keep if k in summary}, **placement,
            "host": {"hostname": platform.node(), "cpus": os.cpu_count()}, "command": shlex.join(command),
            "time": time.time()}


def run_study(study: Study, records: Path) -> list[dict[str, Any]]:
    mode, ranks, config_path, overrides = study.mode, study.ranks, study.config, study.overrides
    if mode not in ("weak", "strong"):
        raise StudyError(f"--mode: {mode!r} is not weak or strong")
    if not ranks or min(ranks) < 1:
        raise StudyError(f"--ranks: expected positive rank counts, got {ranks}")
    where = points(study)
    check_launcher(study, dict(os.environ))
    cfg = config_mod.load(config_path, overrides)  # a bad key fails before any run
    global_batch = study.global_batch or cfg.train.batch_size * max(ranks)
    work = records.parent / (records.stem + "-runs")
    work.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    spread = max(study.nodes) > 1
    for repeat in range(study.repeats):
        for n, p in where:
            batch = batch_for(mode, p, cfg.train.batch_size, global_batch)
            run_dir = work / (f"{mode}-n{n}-p{p}-r{repeat}" if spread else f"{mode}-p{p}-r{repeat}")
            shutil.rmtree(run_dir, ignore_errors=True)
            train_args = [*(["--config", str(Path(config_path).resolve())] if config_path else []), *overrides,
                          f"train.batch_size={batch}", f"run.dir={run_dir}", "checkpoint.resume=never",
                          "checkpoint.at_end=false"]
            cmd = launch(p, train_args, study.launcher, work, n)
            env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "HPCTRAIN_LOG_DIR": str(work / "logs"),  # read by slurm/train.sbatch, as is the next one
                   "HPCTRAIN_BIN": hpctrain_bin()}
            on = f" on {n} node(s)" if spread else ""
            print(f"[scaling] {mode} {p} rank(s){on}, batch {batch}/rank, repeat {repeat + 1}/{study.repeats}",
                  file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            summary_path = run_dir / "summary.json"
            if proc.returncode != 0 or not summary_path.exists():
                raise StudyError(f"{mode} run on {p} ranks{on} failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}"
                                 f"; logs in {run_dir}")
            rec = record(mode, json.loads(summary_path.read_text()), cmd)
            with open(records, "a") as f:  # one write per line: a crash never leaves half a record
                f.write(json.dumps(rec) + "\n")
            out.append(rec)
    return out
