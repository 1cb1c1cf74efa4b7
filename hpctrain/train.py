"""The training loop, readable top to bottom. It composes config, runtime, data, model, optimizer,
checkpoints, fault handling and metrics; the policy of each stays in its own module.

A run's parts (model, loss, data, batch transform, metric) come from the config, or from a user's script
through :func:`hpctrain.fit`, which hands them over as :class:`Parts`; either way the same ``Trainer`` runs
them, with the same guarantees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import horovod
import horovod.torch as hvd
import numpy as np
import torch
from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt
from torch import nn

import hpctrain
from hpctrain import checkpoint, components, dist, distill, memory, models, optim, prune, recompute, runtime
from hpctrain import config as config_mod
from hpctrain.checkpoint import Checkpointer, CheckpointError, StopFlag, StopVote, Watchdog, capture_rng, restore_rng
from hpctrain.config import Config, ConfigError
from hpctrain.data import pipeline
from hpctrain.data.pipeline import BatchOptions, DataPipeline, Given, SampleShape
from hpctrain.errors import UserError
from hpctrain.metrics import PHASES, Metrics, params_sha256
from hpctrain.optim import schedule
from hpctrain.runtime import Runtime, rank_seed, seed_everything

log = logging.getLogger(__name__)

PROBE_SAMPLES = 4  # samples of the one forward that checks users' parts before any step


@dataclass
class Parts:
    """What a run trains, handed over by a script instead of named in the config (None: from the config).

    ``model`` is an ``nn.Module`` or a zero-argument callable that builds one (called after seeding, so
    every rank builds the same initial weights); ``loss(outputs, targets)`` and ``metric(outputs, targets)``
    return scalar tensors; ``transform(inputs, targets, generator)`` returns ``(inputs, targets)``;
    ``train_data`` and ``val_data`` are a dataset directory, a tuple of arrays ``(inputs..., targets)`` or a
    map-style ``torch.utils.data.Dataset`` whose items are ``(input, ..., target)`` tuples."""

    model: nn.Module | Callable[[], nn.Module] | None = None
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    train_data: Any = None
    val_data: Any = None
    transform: Callable[..., Any] | None = None
    metric: Callable[[Any, torch.Tensor], torch.Tensor] | None = None


def build_data(cfg: Config, rt: Runtime, parts: Parts) -> DataPipeline:
    spec = None
    if models.is_builtin(cfg.model.name) and parts.model is None:
        s = models.sample_spec(cfg.model)
        spec = SampleShape(s.input_shape, s.input_dtype == torch.int64, s.num_classes)
    return pipeline.build(
        cfg.data, BatchOptions(cfg.train.batch_size, cfg.eval.batch_size, cfg.train.seed), rt, spec,
        cfg.model.name, hvd.barrier,
        train=Given(parts.train_data, "train_data") if parts.train_data is not None else None,
        val=Given(parts.val_data, "val_data") if parts.val_data is not None else None)


def build_model(cfg: Config, given: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    if given is None:
        model = models.build(cfg.model)
    elif isinstance(given, nn.Module):
        model = given
    else:
        model = components.call(given, "model", f"{components.name_of(given)}()")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: {components.name_of(given)}() returned {type(model).__name__}, "
                              "not a torch.nn.Module")
    if cfg.model.sync_batchnorm:
        if not models.has_batchnorm(model):
            log.warning("model.sync_batchnorm = true, but the model has no BatchNorm layer")
        model = models.to_sync_batchnorm(model)
    if cfg.model.activation_checkpointing:
        recompute.apply(model, recompute.blocks_for(cfg.model.name, cfg.model.recompute_modules, given is None))
    return model


def check_input_names(by_name: bool, names: Any) -> None:
    if by_name and not isinstance(names, list):
        raise ConfigError("data.inputs_by_name: needs named fields (an HDF5 dataset); this data has none")


def transform_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator a batch transform gets: a function of (train.seed, rank, step) only, so a resumed run
    augments its batches exactly as the uninterrupted run did."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) % 2**63)


class Trainer:
    """One data-parallel training run on this rank. Extend by subclassing (``train_step``, ``loss``,
    ``forward``, ``evaluate``); see docs/own-model.md."""

    def __init__(self, cfg: Config, rt: Runtime, parts: Parts | None = None) -> None:
        parts = parts or Parts()
        self.stop_flag = StopFlag()
        self.stop_flag.install()  # from the start: a signal during set-up stops the run at its first step boundary
        self.cfg = cfg
        self.rt = rt
        self.run_dir = Path(cfg.run.dir)
        self.parts = parts
        self.data = build_data(cfg, rt, parts)
        self.world_sizes: list[int] = []  # elastic: the world size after each (re)start of the loop
        self.input_names = self.data.description["train"].get("inputs")
        rt.agree(lambda: check_input_names(cfg.data.inputs_by_name, self.input_names))
        seed_everything(cfg.train.seed)  # same initial weights on every rank, before the broadcast
        self.model = rt.agree(lambda: build_model(cfg, parts.model)).to(rt.device)
        self.loss_fn = parts.loss or rt.agree(lambda: models.build_loss(cfg.train.loss))
        self.metric_fn = parts.metric or (rt.agree(lambda: components.resolve(cfg.eval.metric, "eval.metric"))
                                          if cfg.eval.metric else None)
        self.transform = parts.transform or (
            rt.agree(lambda: components.resolve(cfg.data.transform, "data.transform")) if cfg.data.transform
            else None)
        self.optimizer = optim.build(self.model, cfg.optim, cfg.comm, cfg.train.grad_accum)
        self.pruner = (rt.agree(lambda: prune.Pruner(cfg.prune, self.model)) if cfg.prune.kind != "none"
                       else None)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
        if cfg.train.precision == "fp16" and rt.device.type == "cpu" and rt.is_root:
            log.warning("train.precision = \"fp16\" on a CPU: autocast runs about 27x slower than bf16 here; "
                        "use train.precision=bf16 (no loss scaler needed)")
        self.scaler = (optim.grad_scaler(rt.device.type, cfg.train.loss_scale, self.optimizer)
                       if cfg.train.precision == "fp16" else None)
        self.teacher = (rt.agree(lambda: distill.load_teacher(cfg.distill.teacher, rt.device))
                        if cfg.distill.teacher else None)
        rt.agree(self.check_first_batch)  # dist: users' parts fail here, on every rank alike, before any step
        self.skipped_steps = 0  # fp16: steps whose gradients overflowed (skipped alike on every rank)
        self.grad_norm: float | None = None  # train.clip_norm: the last step's norm before clipping
        seed_everything(rank_seed(cfg.train.seed, rt.rank))  # dist: per-rank randomness from here on
        self.step = 0
        self.set_schedule_position(0, 0, cfg.train.batch_size * rt.size)
        self.phase_s = np.zeros(len(PHASES))  # this step's seconds in each phase (see train_step)
        self.first_loss: float | None = None
        ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else self.run_dir / "checkpoints"
        self.checkpointer = Checkpointer(cfg.checkpoint, ckpt_root, rt.is_root)
        self.resumed_from = self.resume(checkpoint.select_resume(cfg.checkpoint.resume, ckpt_root, rt.is_root,
                                                                 rt.elastic))
        if not rt.elastic:
            optim.broadcast_state(self.model, self.optimizer)  # dist: every rank starts from rank 0's state
        self.stop_vote = StopVote(cfg.fault.signal_check_every, self.stop_flag, self.checkpointer)
        self.stop_vote.join(rt.size)
        self.watchdog = Watchdog(cfg.fault, rt.rank, end_job)
        self.metrics: Metrics | None = None  # opened with the outputs, once there is something to train

    @property
    def complete(self) -> bool:
        """True when a resumed checkpoint is already at ``train.steps``: nothing to train, nothing to write."""
        return self.step >= self.cfg.train.steps

    def open_outputs(self) -> None:
        """Check that the run and checkpoint directories take files (before the first step, agreed by every
        rank), write the resolved config and start the metrics."""
        cfg, rt = self.cfg, self.rt
        error = None
        if rt.is_root or rt.elastic:
            weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            need = weights * (1 + optim.state_copies(cfg.optim))  # one checkpoint; older ones are pruned after
            error = (checkpoint.check_writable(self.run_dir, 1 << 20, "run.dir")
                     or checkpoint.check_writable(self.checkpointer.root, need,
                                                  "checkpoint.dir" if cfg.checkpoint.dir else "run.dir"))
        if not rt.elastic:
            error = hvd.broadcast_object(error, root_rank=0, name="hpctrain.dirs")  # dist: one verdict for all
        if error is not None:
            raise CheckpointError(error, agreed=True)
        if rt.is_root:
            (self.run_dir / "config.toml").write_text(config_mod.to_toml(cfg))
        if not rt.elastic:
            hvd.barrier()  # dist: rank 0 has created run_dir before any rank opens files in it
        self.metrics = Metrics(cfg.run, rt, self.run_dir, cfg.train.steps, cfg.train.batch_size,
                               cfg.train.untimed_steps)
        if self.first_loss is not None:
            self.metrics.first_loss = self.first_loss
        if rt.is_root:
            for note in config_mod.ineffective(cfg, rt.size):
                log.warning("%s", note)
            log.info("data: %s", describe_data(self.data.description))
            if self.teacher is not None:
                log.info("distilling from teacher %s", cfg.distill.teacher)

    # --- users' parts -----------------------------------------------------------------------------------
    def forward(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        """The model on one batch's inputs: positionally, or by field name (data.inputs_by_name)."""
        if self.cfg.data.inputs_by_name:
            return self.model(**dict(zip(self.input_names, inputs, strict=True)))
        return self.model(*inputs)

    def to_device(self, batch: pipeline.Batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        inputs, target = batch
        dev = self.rt.device
        return tuple(torch.as_tensor(x).to(dev) for x in inputs), torch.as_tensor(target).to(dev)

    def apply_transform(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor,
                        step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """data.transform on this rank's batch of ``step``: one input goes in as a tensor, several as a tuple."""
        if self.transform is None:
            return inputs, target
        gen = transform_generator(self.cfg.train.seed, self.rt.rank, step)
        out = self.transform(inputs[0] if len(inputs) == 1 else inputs, target, gen)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ConfigError(f"data.transform: must return (inputs, targets), returned {type(out).__name__}")
        x, y = out
        return ((x,) if isinstance(x, torch.Tensor) else tuple(x)), y

    def check_first_batch(self) -> None:
        """One forward (and loss, and metric) on a few samples of the training and validation data, before
        anything trains: shapes that do not fit the model, labels outside its classes and users' code that
        raises all end here with one line naming the key. Draws no random numbers and moves no data position."""
        given = self.parts.train_data is not None, self.parts.val_data is not None
        train_key = "train_data" if given[0] else "data.path" if self.cfg.data.reads_files else "data"
        probes: list[tuple[str, str, Callable[[int], pipeline.Batch | None]]] = [
            ("train", train_key, self.data.train.first)]
        if self.data.val is not None:
            val_key = "val_data" if given[1] else "data.val_path" if self.cfg.data.val_path else "data.val_samples"
            probes.append(("val", val_key, self.data.val.first))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for which, key, first in probes:
                    batch = first(PROBE_SAMPLES)
                    if batch is None:
                        continue
                    inputs, target = self.to_device(batch)
                    if which == "train":
                        inputs, target = components.call(self.apply_transform, "data.transform",
                                                         "the transform", inputs, target, 0)
                    shapes = ", ".join(f"{list(x.shape)} {str(x.dtype).removeprefix('torch.')}" for x in inputs)
                    outputs = components.call(self.forward, "model.name" if self.parts.model is None else "model",
                                              f"the model's forward on {key} inputs ({shapes})", inputs)
                    self._check_labels(outputs, target, which, key)  # before the loss, which would crash on them
                    self._check_loss(outputs, target, key)
        finally:
            self.model.train(was_training)

    def _check_loss(self, outputs: Any, target: torch.Tensor, key: str) -> None:
        loss_key = "train.loss" if self.parts.loss is None else "loss"
        loss = components.call(self.loss_fn, loss_key, f"the loss on {key} targets ({list(target.shape)} "
                               f"{str(target.dtype).removeprefix('torch.')})", outputs, target)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
            raise ConfigError(f"{loss_key}: must return a scalar float tensor, returned "
                              f"{type(loss).__name__}{list(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if self.metric_fn is not None:
            metric_key = "eval.metric" if self.parts.metric is None else "metric"
            value = components.call(self.metric_fn, metric_key, "the metric", outputs, target)
            if not (isinstance(value, (torch.Tensor, float, int)) and torch.as_tensor(value).numel() == 1):
                raise ConfigError(f"{metric_key}: must return a scalar, returned {type(value).__name__}")

    def _check_labels(self, outputs: Any, target: torch.Tensor, which: str, key: str) -> None:
        """Class labels must index the model's outputs (what cross-entropy would otherwise crash on)."""
        if target.is_floating_point() or not (self.parts.loss is None and self.cfg.train.loss != "mse"):
            return
        classes = int(models.logits_of(outputs).shape[-1])
        desc = self.data.description.get(which, {})
        where = desc.get("path") or f"the {desc.get('source', 'given')} data"
        lo, hi = desc.get("label_range", [int(target.min()), int(target.max())])
        if lo < 0 or hi >= classes:
            raise ConfigError(f"{key}: {where} has labels {lo}..{hi} but the model predicts {classes} classes "
                              "(0.." f"{classes - 1}): set the model's number of classes (model.num_classes, or "
                              "your model's argument) to at least " f"{hi + 1}, or fix the labels")
        declared = desc.get("num_classes")
        if isinstance(declared, int) and declared > classes:
            raise ConfigError(f"{key}: {where} declares num_classes = {declared} in its manifest but the model "
                              f"predicts {classes}: set the model's number of classes to {declared}")

    # --- checkpoint state -------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, JSON state) of a checkpoint; a collective (every rank's RNG state is gathered)."""
        rngs = hvd.allgather_object(capture_rng(), name="hpctrain.rng")  # dist
        tensors = {"model.pt": self.model.state_dict(), "optimizer.pt": self.optimizer.state_dict(),
                   "extra.pt": {"rng": rngs, "lr_scheduler": {},  # the schedule: a function of samples_seen
                                "loss_scaler": self.scaler.state_dict() if self.scaler else {},
                                "prune": self.pruner.state_dict() if self.pruner else {}}}
        state = {"step": self.step, "world_size": self.rt.size, "batch_size": self.cfg.train.batch_size,
                 "samples_seen": self.samples_before(self.step), "schedule_batch": self.schedule_batch,
                 "data": self.data.train.state_dict(),
                 "first_loss": self.metrics.first_loss if self.metrics else self.first_loss,
                 "config": config_mod.to_dict(self.cfg), "model_given": self.model_given, "versions": versions()}
        return tensors, state

    @property
    def model_given(self) -> str:
        """How the model came: "config" (rebuildable from the checkpoint alone) or "object" (from a script)."""
        return "config" if self.parts.model is None else "object"

    def resume(self, path: Path | None) -> Path | None:
        """Load a checkpoint chosen by rank 0 (the same on every rank); None when starting fresh."""
        if path is None:
            return None
        tensors, state = checkpoint.load(path)
        differs = checkpoint.config_mismatch(state.get("config", {}), config_mod.to_dict(self.cfg))
        if differs:
            raise CheckpointError(f"{path}: written with another setting ({differs}): resume with the checkpoint's "
                                  "setting, or start afresh with --resume never (or another run.dir)", agreed=True)
        try:
            self.model.load_state_dict(tensors["model.pt"])
            optim.load_state(self.optimizer, self.model, tensors["optimizer.pt"])
            self.data.train.load_state_dict(state["data"])
        except (RuntimeError, ValueError, KeyError, UserError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this run ({first}); resume with the config it was "
                                  "written with, or start fresh with --resume never", agreed=True) from None
        rngs = tensors["extra.pt"]["rng"]
        if self.pruner is not None:
            self.pruner.load_state_dict(tensors["extra.pt"].get("prune", {}))
        if self.scaler and tensors["extra.pt"].get("loss_scaler"):
            self.scaler.load_state_dict(tensors["extra.pt"]["loss_scaler"])
        if state["world_size"] == self.rt.size:
            restore_rng(rngs[self.rt.rank])
        else:  # a new rank layout: fresh per-rank streams, still a function of (seed, rank, step)
            seed_everything(rank_seed(self.cfg.train.seed + state["step"], self.rt.rank))
        self.step = int(state["step"])
        self.set_schedule_position(self.step, *schedule.position_from_state(state))
        self.first_loss = state.get("first_loss")
        if self.rt.is_root:
            log.info("resumed from %s (step %d, written by %d rank(s))", path, self.step, state["world_size"])
        return path

    def save_checkpoint(self, sync: bool = False) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes; all agree on the outcome."""
        self.watchdog.enter("checkpoint")
        tensors, state = self.state_dict()
        error = self.checkpointer.save(self.step, tensors, state, sync=sync, shard=optim.shard_of(self.optimizer))
        self._check_checkpoint_error(error)

    def _check_checkpoint_error(self, error: str | None) -> None:
        error = hvd.broadcast_object(error, root_rank=0, name="hpctrain.ckpt_status")  # dist: named,
        # as every object collective here: the default name is the type, which differs between ranks
        if error is None:
            return
        if self.cfg.checkpoint.on_error == "stop":
            raise CheckpointError(error, agreed=True)
        if self.rt.is_root:
            log.warning("%s (checkpoint.on_error=continue: training goes on without this checkpoint)", error)

    def train_step(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        """One optimizer step over ``train.grad_accum`` micro-batches; records how long each phase took in
        ``self.phase_s`` (the step-time breakdown: a few clock reads, cheap enough to leave on). On a GPU the
        phases are those of the host thread."""
        cfg = self.cfg.train
        t0 = time.perf_counter()
        schedule.apply_lr(self.optimizer, self.lr_at(self.step))
        self.optimizer.zero_grad()
        n = cfg.grad_accum
        # one micro-batch is the common case: no split, no extra ops (each costs a kernel launch on a GPU)
        micro = (zip(zip(*(x.chunk(n) for x in inputs), strict=True), target.chunk(n), strict=True) if n > 1
                 else ((inputs, target),))
        losses = []
        for x, y in micro:
            with self.autocast():
                loss = self.loss(x, y)
            losses.append(loss.detach())
            scaled = loss / n if n > 1 else loss  # the mean over the whole batch, as one backward would give
            # dist: gradients are all-reduced in the background after the last micro-batch's backward
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        t1 = time.perf_counter()
        self.watchdog.enter("all-reduce")
        self.optimizer.synchronize()  # dist: wait for the all-reduces; from here gradients are equal on all ranks
        t2 = time.perf_counter()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # after synchronize: every rank sees the same inf/nan
        if cfg.clip_norm:
            self.grad_norm = optim.clip_grad_norm(self.optimizer, self.model, cfg.clip_norm)
        with self.optimizer.skip_synchronize():
            if self.scaler:
                scale = self.scaler.get_scale()
                self.scaler.step(self.optimizer)  # skipped when the averaged gradients overflowed: on all ranks
                self.scaler.update()
                self.skipped_steps += self.scaler.get_scale() < scale
            else:
                self.optimizer.step()
        t3 = time.perf_counter()
        self.phase_s[1:] = (t1 - t0, t2 - t1, t3 - t2)
        return losses[0] if n == 1 else torch.stack(losses).mean()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (train.precision); nothing at all for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.autocast_dtype)

    def loss(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch: train.loss of the outputs, or mixed with a teacher's soft
        targets."""
        if self.teacher is None:
            return self.loss_fn(self.forward(inputs), target)
        with torch.no_grad():
            soft = models.logits_of(self.teacher(*inputs))
        d = self.cfg.distill
        return distill.distillation_loss(models.logits_of(self.forward(inputs)), soft, target, d.temperature,
                                         d.alpha)

    def set_schedule_position(self, step: int, seen: int, schedule_batch: int) -> None:
        """Where the schedule stands when this world takes over: ``seen`` samples trained on before ``step``,
        and the global batch that converts the schedule's step counts into samples (the run's first). The
        schedule is built here, once per world, not at every step."""
        self.samples_at = (step, seen)
        self.schedule_batch = schedule_batch
        self.schedule = schedule.Schedule.from_config(self.cfg.optim, self.cfg.train.steps, self.rt.size,
                                                      schedule_batch)

    def samples_before(self, step: int) -> int:
        """Samples trained on before update ``step`` (0-based), counting one global batch per step since this
        world took over."""
        start, seen = self.samples_at
        return seen + (step - start) * self.cfg.train.batch_size * self.rt.size

    def lr_at(self, step: int) -> float:
        """The rate of update ``step``: a function of the samples before it (the rule: docs/training.md)."""
        return schedule.lr_at_samples(self.samples_before(step), self.cfg.train.batch_size * self.rt.size,
                                      self.schedule)

    def train(self) -> dict[str, Any]:
        self.open_outputs()
        assert self.metrics is not None
        self.model.train()
        self.metrics.start(self.step)
        self.watchdog.start()
        return self._train_elastic() if self.cfg.fault.elastic else self._train_loop()

    def _train_loop(self, commit: Callable[[], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        assert self.metrics is not None  # opened by train()
        while self.step < cfg.train.steps:
            self.watchdog.enter("data")
            t0 = time.perf_counter()
            inputs, target = self.to_device(self.data.train.next_batch())
            if self.transform is not None:
                inputs, target = self.apply_transform(inputs, target, self.step)
            self.phase_s[0] = time.perf_counter() - t0
            self.watchdog.enter("forward/backward")
            loss = self.train_step(inputs, target)
            self.step += 1
            if self.pruner is not None:  # masks from this rank's replica: identical on every rank
                self.pruner.update(self.step)
            self.watchdog.beat(self.step, "collective")
            self.metrics.step_done(self.step, loss, self.optimizer.param_groups[0]["lr"], self.phase_s)
            if self.data.val is not None and cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 \
                    and self.step != cfg.train.steps:
                t0 = time.perf_counter()
                result = self.evaluate()
                self.metrics.record_eval(self.step, result, time.perf_counter() - t0)
            stop_signal, timed = self.stop_vote.vote(self.step)
            stop = stop_signal > 0
            if stop or timed or self.checkpointer.due(self.step):
                self.save_checkpoint(sync=stop)
            if stop:
                name = signal.Signals(stop_signal).name
                if self.rt.is_root:
                    log.warning("stopping on request (%s on at least one rank) after step %d: checkpoint written; "
                                "hpctrain exits 75 (requeue me), recorded in %s/exit.json (mpirun reports 1 after "
                                "Ctrl-C: see docs/fault-tolerance.md)", name, self.step, self.run_dir)
                return {"preempted": True, "steps": self.step, "signal": name}
            if commit is not None and self.step % cfg.fault.commit_every == 0:
                commit()
        self.stop_vote.drain()  # dist: no collective left in flight; a signal this late changes nothing
        if cfg.checkpoint.at_end and not self.checkpointer.has(self.step):
            self.save_checkpoint(sync=True)
        return self.finish()

    def _train_elastic(self) -> dict[str, Any]:
        """Horovod elastic: state is committed in memory every ``fault.commit_every`` steps; when a worker is
        lost (or one is added), Horovod restores the last commit, re-forms the world, and the loop goes on."""
        assert self.metrics is not None
        state = hvd.elastic.TorchState(model=self.model, optimizer=self.optimizer, step=self.step,
                                       data=self.data.train.state_dict(), first_loss=self.metrics.first_loss,
                                       samples_seen=self.samples_before(self.step),
                                       schedule_batch=self.schedule_batch)

        @hvd.elastic.run  # dist: re-runs the function after a reset, with state synced from rank 0
        def loop(state: Any) -> dict[str, Any]:
            self._join_world(state)

            def commit() -> None:
                assert self.metrics is not None
                state.step, state.data = self.step, self.data.train.state_dict()
                state.samples_seen = self.samples_before(self.step)  # before the world (and its batch) changes
                state.first_loss = self.metrics.first_loss
                state.commit()

            try:
                return self._train_loop(commit)
            except (HorovodInternalError, HostsUpdatedInterrupt):
                # dist: Horovod now re-forms the world. The wait for the new rendezvous is no peer's
                # all-reduce: fault.peer_timeout_s must not end a rank that is rejoining; watchdog_s bounds it
                self.watchdog.enter(checkpoint.RESET_PHASE)
                raise

        return loop(state)

    def _join_world(self, state: Any) -> None:
        """On entry and after every elastic reset: take this rank's place in the (maybe new) world and
        re-partition the rest of the epoch's data (and the validation set) among the ranks there are now."""
        cfg = self.cfg
        self.rt = runtime.refresh(self.rt)
        self.stop_vote.join(self.rt.size)
        runtime.setup_logging(self.rt.rank, self.rt.size, cfg.run.log_all_ranks)
        self.step = state.step
        self.set_schedule_position(state.step, state.samples_seen, state.schedule_batch)
        assert self.metrics is not None
        self.metrics.set_runtime(self.rt, self.step)
        self.checkpointer.is_root = self.rt.is_root
        self.metrics.first_loss = state.first_loss
        self.data.close()
        self.data = build_data(cfg, self.rt, self.parts)
        self.data.train.load_state_dict(state.data)
        if self.world_sizes and self.world_sizes[-1] != self.rt.size:
            log.warning("elastic: world is now %d rank(s); continuing from step %d", self.rt.size, self.step)
        self.world_sizes.append(self.rt.size)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss (accuracy for class targets, and eval.metric) over the whole validation set, summed across
        ranks. Buffers (BatchNorm running statistics) are rank 0's on every rank first: each rank's drift
        apart, as they are updated from each rank's own part of the batch."""
        assert self.data.val is not None
        if self.rt.size > 1 and any(True for _ in self.model.buffers()):
            hvd.broadcast_parameters(list(self.model.named_buffers()), root_rank=0)  # dist
        self.model.eval()
        totals = torch.zeros(5, dtype=torch.float64)  # loss sum, correct, predictions, samples, metric sum
        for batch in self.data.val.batches():
            inputs, target = self.to_device(batch)
            outputs = self.forward(inputs)
            n = len(target)
            totals[0] += float(self.loss_fn(outputs, target)) * n
            totals[3] += n
            if not target.is_floating_point() and self.cfg.train.loss != "mse":
                totals[1] += float((models.logits_of(outputs).argmax(-1) == target).sum())
                totals[2] += target.numel()
            if self.metric_fn is not None:
                totals[4] += float(self.metric_fn(outputs, target)) * n
        self.model.train()
        totals = hvd.allreduce(totals, op=hvd.Sum, name="hpctrain.eval")  # dist: every sample counted once
        result = {"val_loss": float(totals[0] / totals[3]), "val_samples": int(totals[3])}
        if totals[2] > 0:
            result["val_accuracy"] = float(totals[1] / totals[2])
        if self.metric_fn is not None:
            result["val_metric"] = float(totals[4] / totals[3])
        return result

    def finish(self) -> dict[str, Any]:
        """Summary on every rank (collective); rank 0 writes summary.json and the final weights."""
        assert self.metrics is not None  # opened by train()
        digest = params_sha256(self.model)
        # dist: per-rank values that must agree (the parameters; fp16 skipped steps and loss scale; the clipped
        # norm): a difference means a broken broadcast, a lost update or ranks that took different decisions
        per_rank = hvd.allgather_object((digest, self.skipped_steps, self.grad_norm,
                                         self.scaler.get_scale() if self.scaler else None,
                                         self.pruner.digest() if self.pruner else None,
                                         memory.rank_record(optim.held_bytes(self.optimizer, self.model),
                                                            self.rt.device),
                                         socket.gethostname()), name="hpctrain.final")
        digests = [r[0] for r in per_rank]
        if len(set(digests)) > 1 and self.rt.is_root:
            log.error("parameters differ between ranks at the end (ranks %s differ from rank 0)",
                      [r for r, d in enumerate(digests) if d != digest])
        extra = {
            "steps": self.step,
            "params_sha256": digest,
            "replicas_identical": len(set(digests)) == 1,
            "num_parameters": models.num_parameters(self.model),
            "model": self.cfg.model.name if self.parts.model is None else components.name_of(self.model),
            "model_given": self.model_given,
            "loss": self.cfg.train.loss if self.parts.loss is None else components.name_of(self.parts.loss),
            "data": self.data.description,
            "teacher": self.cfg.distill.teacher or None,
            "compression": self.cfg.comm.compression,
            "launcher": self.rt.launch.launcher,
            "controller": self.rt.controller,
            "device": str(self.rt.device),
            "threads_per_rank": self.rt.threads,
            # ranks per host, in rank order: scaling studies read where the job really ran
            "hosts": dict(Counter(r[6] for r in per_rank)),
            "versions": versions(),
        }
        if self.data.val is not None:
            extra.update(self.evaluate())
            self.metrics.record_eval(self.step, extra)
        extra["resumed_from"] = str(self.resumed_from) if self.resumed_from else None
        if self.cfg.fault.elastic:
            extra["elastic_world_sizes"] = self.world_sizes
        extra["precision"] = self.cfg.train.precision
        extra["skipped_steps_per_rank"] = [r[1] for r in per_rank]
        extra["grad_norm_per_rank"] = [r[2] for r in per_rank]
        extra["loss_scale_per_rank"] = [r[3] for r in per_rank]
        if self.pruner is not None:
            extra["prune"] = {**self.pruner.summary(), "masks_sha256_per_rank": [r[4] for r in per_rank]}
        extra["memory"] = memory.summary([r[5] for r in per_rank], self.cfg.optim.zero_stage,
                                         optim.state_copies(self.cfg.optim),
                                         sum(p.numel() for p in self.model.parameters() if p.requires_grad))
        self._wait_for_checkpoint()  # the summary counts an async checkpoint once it is on disk
        extra["checkpoints"] = {"written": self.checkpointer.stats.count,
                                "stall_s": self.checkpointer.stats.stall_s,
                                "write_s": self.checkpointer.stats.write_s,
                                "async": self.cfg.checkpoint.async_write}
        summary = self.metrics.summary(extra)
        if self.rt.is_root:
            tmp = self.run_dir / ".model.pt.tmp"
            torch.save(self.model.state_dict(), tmp)
            tmp.replace(self.run_dir / "model.pt")
        return summary

    def close(self) -> None:
        self.watchdog.stop()
        self.stop_flag.uninstall()
        self._wait_for_checkpoint()  # an async write in flight finishes before the process ends
        if self.metrics is not None:
            self.metrics.close()
        self.data.close()

    def _wait_for_checkpoint(self) -> None:
        error = self.checkpointer.wait()
        if error and self.rt.is_root:
            log.error("%s", error)


def describe_summary(summary: dict[str, Any], run_dir: Path) -> str:
    """The few lines a person reads at the end of a run."""
    rate = summary["samples_per_sec"]
    per_rank = summary["samples_per_sec_per_rank"]["mean"]
    phases = "  ".join(f"{k} {summary['breakdown_ms'][k]:.2f}" for k in PHASES)
    val = ""
    if "val_loss" in summary:
        val = f"  validation loss {summary['val_loss']:.4f}"
        if "val_accuracy" in summary:
            val += f", accuracy {summary['val_accuracy']:.2%}"
        val += f" over {summary['val_samples']} samples\n"
    return (f"trained {summary['model']} for {summary['steps']} steps on {summary['world_size']} rank(s) "
            f"({summary['launcher']}, {summary['controller']} controller, compression {summary['compression']})\n"
            f"  loss {_fmt(summary['initial_loss'], '.4f')} -> {_fmt(summary['final_loss'], '.4f')}\n{val}"
            + (f"  throughput {rate:,.0f} samples/s global, {per_rank:,.0f} samples/s per rank, "
               f"step {summary['step_time_ms']['mean']:.1f} ms (after {summary['untimed_steps']} untimed steps)\n"
               if summary.get("measured_steps") else "  throughput: no step measured after the untimed steps\n") +
            f"  step time ms: {phases}\n"
            + (memory.describe(summary["memory"]) if "memory" in summary else "") +
            f"  outputs in {run_dir}/: metrics.jsonl, summary.json, config.toml, model.pt, report.md, tensorboard/\n"
            f"  params_sha256 {summary['params_sha256']}")


def _fmt(value: float | None, spec: str) -> str:
    """A figure of the summary, or "n/a" where a run had none (no step trained since a resume)."""
    return "n/a" if value is None or value != value else format(value, spec)


def end_job() -> None:
    """From the watchdog thread: take every rank of the job down now (exit code 1)."""
    dist.abort_world(1)
    os._exit(1)  # no MPI world (one process, or the Gloo controller: horovodrun then ends the others)


def versions() -> dict[str, str]:
    return {"hpctrain": hpctrain.__version__, "torch": torch.__version__, "horovod": horovod.__version__}


def describe_data(desc: dict[str, Any]) -> str:
    """One line on what data the run uses (the same facts as summary.json's "data")."""
    parts = []
    for which in ("train", "val"):
        d = desc.get(which)
        if d:
            where = d.get("path") or d.get("class") or ""
            parts.append(f"{which} {d['source']}{' ' + where if where else ''} ({d['samples']} samples)")
    return ", ".join(parts)


def run(cfg: Config, rt: Runtime, parts: Parts | None = None,
        trainer_class: type[Trainer] | None = None) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` describes; the summary. A run whose newest checkpoint is already at
    ``train.steps`` is complete: nothing is trained and no file is touched."""
    trainer = (trainer_class or Trainer)(cfg, rt, parts)
    try:
        if trainer.complete:
            if rt.is_root:
                log.info("already complete at step %d (checkpoint %s): nothing to do; raise train.steps to "
                         "train on", trainer.step, trainer.resumed_from)
            return {"complete": True, "steps": trainer.step, "resumed_from": str(trainer.resumed_from)}
        summary = trainer.train()
    finally:
        trainer.close()
    if rt.is_root and not summary.get("preempted"):
        if cfg.run.report:
            from hpctrain.run_report import write_run_report

            write_run_report(trainer.run_dir)
        log.info("done\n%s", describe_summary(summary, trainer.run_dir))
    return summary
