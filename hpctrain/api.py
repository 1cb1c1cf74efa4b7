"""The Python API: train from a user's own script, launched as Horovod users launch theirs
(``horovodrun -np 4 python train_mine.py``, ``srun --mpi=pmix python train_mine.py``, ``mpirun``).

``hpctrain train`` is a thin caller of :func:`train`; :func:`fit` is the same path for scripts, with the
same guarantees: every rank runs the same steps, stops are agreed, a pre-emption signal checkpoints and
ends the process with exit code 75, a user error ends every rank with exit code 2 and one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpctrain import config as config_mod
from hpctrain import errors
from hpctrain.config import Config, ConfigError

_runtime: Any = None  # this process's Runtime: MPI and Horovod are initialised once, by the first run
log = logging.getLogger(__name__)

# How a training ended, written by rank 0 as its last act: {"exit_code": 0 or 75, "outcome": "completed" or
# "preempted", ...}. The exit code hpctrain returns does not always reach the shell: mpirun returns 1 after
# Ctrl-C or SIGTERM to it although every rank checkpointed and exited 75, horovodrun --gloo returns 1 for any
# non-zero exit (docs/fault-tolerance.md has the measured table). Absent: the run failed, or is still going.
RECORD_FILE = "exit.json"  # in run.dir
RECORD_FILE_VAR = "HPCTRAIN_EXIT_FILE"  # a second copy where a batch script wants it (slurm/train.sbatch)


def load_config(config: Config | str | Path | Mapping[str, Any] | None,
                overrides: Sequence[str] = ()) -> Config:
    """A Config from a Config, a TOML path, a ``{section: {key: value}}`` mapping or None (the defaults),
    then ``section.key=value`` overrides."""
    if isinstance(config, Config):
        if not overrides:
            return config
        config = config_mod.to_dict(config)
    if isinstance(config, Mapping):
        tree = {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}
        return config_mod.from_dict(config_mod.apply_overrides(tree, overrides, "config"), "config")
    if config is None or isinstance(config, (str, Path)):
        return config_mod.load(config, overrides)
    raise ConfigError(f"config: expected a Config, a TOML file path or a dict, got {type(config).__name__}")


def train(cfg: Config, parts: Any = None, trainer_class: Any = None) -> dict[str, Any]:
    """Initialise this rank (once per process) and train ``cfg`` with ``parts``; the summary (on every rank).
    Errors propagate: :func:`fit` and the CLI turn them into exit codes."""
    global _runtime
    from hpctrain import runtime
    from hpctrain import train as train_mod

    if cfg.run.timeline:  # Horovod reads it at hvd.init() and writes it from rank 0
        Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("HOROVOD_TIMELINE", str(Path(cfg.run.dir).resolve() / "horovod-timeline.json"))
    records = record_paths(cfg.run.dir)
    if errors.env_rank() == 0:  # a previous run's record must not speak for this one, however this one ends
        for path in records:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # an unwritable run.dir: the directory check before the first step names it
                pass
    if _runtime is None:
        _runtime = runtime.init(cfg.comm, fault=cfg.fault, malloc_keep_mb=cfg.run.malloc_keep_mb)
    runtime.setup_logging(_runtime.rank, _runtime.size, cfg.run.log_all_ranks)
    summary = train_mod.run(cfg, _runtime, parts, trainer_class or train_mod.Trainer)
    import horovod.torch as hvd

    if hvd.rank() == 0:  # dist: rank 0 now (an elastic run may have a different one than at the start)
        # a finished run run again writes the same bytes again (no time or pid in the record)
        write_records(records, errors.EXIT_REQUEUE if summary.get("preempted") else errors.EXIT_OK, summary, cfg,
                      _runtime.launch.launcher)
    if hvd.size() > 1:
        # dist: the first rank to exit 75 makes mpirun or srun --kill-on-bad-exit kill the others: none leaves
        # before rank 0 has finished its files and the record
        hvd.barrier()
    return summary


def record_paths(run_dir: str) -> list[Path]:
    extra = os.environ.get(RECORD_FILE_VAR)
    return [Path(run_dir) / RECORD_FILE, *([Path(extra)] if extra else [])]


def write_records(paths: list[Path], code: int, summary: dict[str, Any], cfg: Config, launcher: str) -> None:
    """exit.json: the exit code hpctrain meant, the outcome, the step and (after a stop) the checkpoint."""
    from hpctrain.checkpoint import step_dir
    from hpctrain.metrics import write_json_atomic

    steps = int(summary.get("steps", 0))
    record: dict[str, Any] = {
        "exit_code": code, "outcome": "preempted" if code == errors.EXIT_REQUEUE else "completed", "step": steps,
        "launcher": launcher,
        **{k: os.environ[v] for k, v in (("slurm_job_id", "SLURM_JOB_ID"),
                                          ("slurm_restart_count", "SLURM_RESTART_COUNT")) if v in os.environ}}
    if code == errors.EXIT_REQUEUE:
        ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.run.dir) / "checkpoints"
        if summary.get("signal"):
            record["signal"] = summary["signal"]
        if step_dir(ckpt_root, steps).is_dir():
            record["checkpoint"] = str(step_dir(ckpt_root, steps).resolve())
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, record)
        except OSError as e:  # the training itself is done and saved: say so, keep its exit code
            log.error("cannot write %s (%s): the exit code is the only record of how this run ended", path,
                      e.strerror)


def fit(config: Config | str | Path | Mapping[str, Any] | None = None, *, model: Any = None,
        loss: Callable[..., Any] | None = None, train_data: Any = None, val_data: Any = None,
        transform: Callable[..., Any] | None = None, metric: Callable[..., Any] | None = None,
        overrides: Sequence[str] = (), trainer_class: Any = None) -> dict[str, Any]:
    """Train a model on this rank of the job, with everything ``hpctrain train`` does.

    Args:
        config: a :class:`hpctrain.config.Config`, a TOML file, a ``{section: {key: value}}`` dict, or None
            for the defaults. Keys the arguments below replace (``model.*``, ``train.loss``, ``data.*`` of
            the data source, ``eval.metric``) are then not read.
        model: an ``nn.Module``, or a zero-argument callable returning one (called after seeding, so every
            rank builds the same initial weights; rank 0's are broadcast either way). None: ``model.name``.
        loss: ``loss(outputs, targets) -> scalar tensor``; None: ``train.loss``.
        train_data: a dataset directory, a tuple of arrays ``(inputs..., targets)`` or a map-style
            ``torch.utils.data.Dataset`` whose items are ``(input, ..., target)`` tuples (partitioned by
            hpctrain's global sampler; a resume continues mid-epoch exactly). None: ``[data]``.
        val_data: the same kinds, for validation (each sample evaluated once across ranks).
        transform: ``transform(inputs, targets, generator) -> (inputs, targets)`` on each training batch,
            with a ``torch.Generator`` seeded from (seed, rank, step). None: ``data.transform``.
        metric: ``metric(outputs, targets) -> scalar`` averaged over the validation set.
        overrides: ``section.key=value`` strings applied to ``config``.
        trainer_class: a :class:`hpctrain.train.Trainer` subclass (e.g. with its own ``train_step``).

    Returns:
        The run summary (what ``summary.json`` holds), on every rank; ``{"complete": True, ...}`` when the
        run was already finished.

    Raises:
        SystemExit: code 75 after a stop signal (SIGUSR1/SIGTERM/SIGINT: checkpoint written, requeue me);
            code 2 on a user error (one line on stderr, every rank); code 1 on an unexpected failure (the
            whole MPI job is aborted so no rank is left waiting).
    """
    from hpctrain.train import Parts

    def run() -> dict[str, Any]:
        cfg = load_config(config, overrides)
        if model is not None:
            cfg.model = dataclasses.replace(cfg.model, name=_given_name(model), args={})
        return train(cfg, Parts(model, loss, train_data, val_data, transform, metric), trainer_class)

    code, summary = errors.run_guarded(run)
    if code == errors.EXIT_OK and summary.get("preempted"):
        code = errors.EXIT_REQUEUE
    if code != errors.EXIT_OK:
        raise SystemExit(code)
    return summary


def _given_name(model: Any) -> str:
    """model.name as recorded for a model handed over as an object (shown in logs, summary and config)."""
    from hpctrain import components

    name = components.name_of(model)
    return name if config_mod.is_import_path(name) else "__main__:model"
