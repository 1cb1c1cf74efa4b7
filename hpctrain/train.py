"""The training loop, readable top to bottom. It composes config, runtime, data, model, optimizer and
metrics; the policy of each stays in its own module."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import horovod
import horovod.torch as hvd
import numpy as np
import torch

import hpctrain
from hpctrain import checkpoint, distill, models, optim, runtime, schedule
from hpctrain import config as config_mod
from hpctrain.checkpoint import Checkpointer, CheckpointError, StopFlag, Watchdog, capture_rng, restore_rng
from hpctrain.config import Config, ConfigError, DataConfig, UserError
from hpctrain.data import synthetic
from hpctrain.data.format import Manifest
from hpctrain.data.memory import InMemorySource
from hpctrain.data.reader import ShardedReader, ShardFiles, eval_ids, open_dataset
from hpctrain.data.sampler import GlobalBatchSampler
from hpctrain.data.stage import stage
from hpctrain.metrics import PHASES, Metrics, params_sha256
from hpctrain.runtime import Runtime, rank_seed, seed_everything

log = logging.getLogger(__name__)


def check_compatible(model: str, spec: models.SampleSpec, manifest: Manifest, path: str) -> None:
    """The dataset's input and target fields must be what the configured model takes."""
    x, y = manifest.field(manifest.inputs), manifest.field(manifest.targets)
    if tuple(x.shape) != spec.input_shape:
        raise ConfigError(f"{path}: field {x.name!r} has samples of shape {list(x.shape)} but model "
                          f"{model!r} takes {list(spec.input_shape)}: adjust the [model] section")
    if np.dtype(x.dtype).kind != ("i" if spec.input_dtype == torch.int64 else "f"):
        raise ConfigError(f"{path}: field {x.name!r} is {x.dtype}, model {model!r} takes "
                          f"{'integer tokens' if spec.input_dtype == torch.int64 else 'real numbers'}")
    if np.dtype(y.dtype).kind in "iu" and tuple(y.shape) != spec.target_shape:
        raise ConfigError(f"{path}: target field {y.name!r} has shape {list(y.shape)}, model {model!r} "
                          f"predicts {list(spec.target_shape)}")


def resolve_paths(cfg: DataConfig, rt: Runtime) -> tuple[str, str]:
    """Dataset paths to read from: in place, or staged to node-local storage first (collective)."""
    if not cfg.stage_dir:
        return cfg.path, cfg.val_path
    return tuple(  # type: ignore[return-value]
        str(rt.agree(lambda p=p: stage(p, cfg.stage_dir, rt.local_rank, hvd.barrier))) if p else ""
        for p in (cfg.path, cfg.val_path))


def build_train_source(cfg: Config, rt: Runtime, path: str) -> InMemorySource | ShardedReader:
    spec = models.sample_spec(cfg.model)
    seed, batch = cfg.train.seed, cfg.train.batch_size
    if cfg.data.source == "synthetic":
        x, y = synthetic_arrays(spec, cfg.data.samples, seed)
        sampler = rt.agree(lambda: _sampler(len(x), batch, rt, seed, cfg.data.remainder))
        return InMemorySource(x, y, sampler)
    manifest = rt.agree(lambda: open_dataset(path, cfg.data.verify))
    rt.agree(lambda: check_compatible(cfg.model.name, spec, manifest, path))
    return rt.agree(lambda: ShardedReader(
        path, manifest, rt.rank, rt.size, batch, seed, cfg.data.remainder, cfg.data.shuffle_window,
        cfg.data.block_samples, cfg.data.prefetch, cfg.data.read_threads))


def _sampler(n: int, batch: int, rt: Runtime, seed: int, remainder: str) -> GlobalBatchSampler:
    try:
        return GlobalBatchSampler(n, batch, rt.rank, rt.size, seed, remainder)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"data.samples: {e}") from None


def synthetic_arrays(spec: models.SampleSpec, n: int, seed: int,
                     sample_seed: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    return synthetic.samples(n, spec.input_shape, spec.num_classes, seed, spec.input_dtype == torch.int64,
                             sample_seed=sample_seed)


class ValidationSet:
    """This rank's share of the validation samples: disjoint, together every sample exactly once."""

    def __init__(self, cfg: Config, rt: Runtime, path: str) -> None:
        self.batch_size = cfg.eval.batch_size
        self.files: ShardFiles | None = None
        if cfg.data.source == "synthetic":
            n = cfg.data.val_samples
            self.ids = eval_ids(n, rt.rank, rt.size)
            spec = models.sample_spec(cfg.model)
            self.arrays = synthetic_arrays(spec, n, cfg.train.seed, sample_seed=(cfg.train.seed, 7_000_003))
        else:
            manifest = rt.agree(lambda: open_dataset(path, cfg.data.verify))
            rt.agree(lambda: check_compatible(cfg.model.name, models.sample_spec(cfg.model), manifest, path))
            self.files = ShardFiles(Path(path), manifest, [manifest.inputs, manifest.targets])
            self.ids = eval_ids(manifest.num_samples, rt.rank, rt.size)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, len(self.ids), self.batch_size):
            ids = self.ids[a:a + self.batch_size]
            if self.files is None:
                yield self.arrays[0][ids], self.arrays[1][ids]
            else:
                m = self.files.manifest
                fields = self.files.read(ids)
                yield fields[m.inputs], fields[m.targets]

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


class Trainer:
    """One data-parallel training run on this rank. Extend by subclassing ``train_step``."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg = cfg
        self.rt = rt
        self.run_dir = Path(cfg.run.dir)
        self.train_path, self.val_path = resolve_paths(cfg.data, rt)
        self.data = build_train_source(cfg, rt, self.train_path)
        has_val = cfg.data.val_samples > 0 if cfg.data.source == "synthetic" else bool(self.val_path)
        self.val = ValidationSet(cfg, rt, self.val_path) if has_val else None
        self.world_sizes: list[int] = []  # elastic: the world size after each (re)start of the loop
        seed_everything(cfg.train.seed)  # same initial weights on every rank, before the broadcast
        self.model = models.build(cfg.model).to(rt.device)
        self.optimizer = optim.build(self.model, cfg.optim, cfg.comm, cfg.train.grad_accum)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
        self.scaler = (torch.amp.GradScaler(rt.device.type, init_scale=cfg.train.loss_scale)
                       if cfg.train.precision == "fp16" else None)
        self.teacher = load_teacher(cfg.distill.teacher, rt) if cfg.distill.teacher else None
        self.skipped_steps = 0  # fp16: steps whose gradients overflowed (skipped alike on every rank)
        self.grad_norm: float | None = None  # train.clip_norm: the last step's norm before clipping
        seed_everything(rank_seed(cfg.train.seed, rt.rank))  # dist: per-rank randomness from here on
        self.step = 0
        self.phase_s = np.zeros(len(PHASES))  # this step's seconds in each phase (see train_step)
        self._flags: int | None = None  # handle of the flags all-reduce in flight (see agree_on_flags)
        self.first_loss: float | None = None
        ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else self.run_dir / "checkpoints"
        self.checkpointer = Checkpointer(cfg.checkpoint, ckpt_root, rt.is_root)
        self.resumed_from = self.resume(select_resume(cfg.checkpoint.resume, ckpt_root, rt))
        if rt.elastic:  # dist: no collectives before hvd.elastic.run, whose state.sync() broadcasts rank 0's state
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            optim.broadcast_state(self.model, self.optimizer)  # dist: every rank starts from rank 0's state
        if rt.is_root:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(config_mod.to_toml(cfg))
        if not rt.elastic:
            hvd.barrier()  # dist: rank 0 has created run_dir before any rank opens files in it
        self.metrics = Metrics(cfg.run, rt, self.run_dir, cfg.train.steps, cfg.train.batch_size,
                               cfg.train.warmup_steps)
        if self.first_loss is not None:
            self.metrics.first_loss = self.first_loss
        self.stop_flag = StopFlag()
        self.watchdog = Watchdog(cfg.fault, rt.rank, end_job)

    # --- checkpoint state -------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, JSON state) of a checkpoint; a collective (every rank's RNG state is gathered)."""
        rngs = hvd.allgather_object(capture_rng(), name="hpctrain.rng")  # dist
        tensors = {"model.pt": self.model.state_dict(), "optimizer.pt": self.optimizer.state_dict(),
                   "extra.pt": {"rng": rngs, "lr_scheduler": {},  # the schedule is a function of the step
                                "loss_scaler": self.scaler.state_dict() if self.scaler else {}}}
        state = {"step": self.step, "world_size": self.rt.size, "batch_size": self.cfg.train.batch_size,
                 "data": self.data.state_dict(), "first_loss": self.metrics.first_loss,
                 "config": config_mod.to_dict(self.cfg),
                 "versions": {"hpctrain": hpctrain.__version__, "torch": torch.__version__,
                              "horovod": horovod.__version__}}
        return tensors, state

    def resume(self, path: Path | None) -> Path | None:
        """Load a checkpoint chosen by rank 0 (the same on every rank); None when starting fresh."""
        if path is None:
            return None
        tensors, state = checkpoint.load(path)
        try:
            self.model.load_state_dict(tensors["model.pt"])
            self.optimizer.load_state_dict(tensors["optimizer.pt"])
            self.data.load_state_dict(state["data"])
        except (RuntimeError, ValueError, KeyError, UserError) as e:
            raise CheckpointError(f"{path}: does not fit this run ({e}); resume with the config it was "
                                  "written with, or start fresh with --resume never", agreed=True) from None
        rngs = tensors["extra.pt"]["rng"]
        if self.scaler and tensors["extra.pt"].get("loss_scaler"):
            self.scaler.load_state_dict(tensors["extra.pt"]["loss_scaler"])
        if state["world_size"] == self.rt.size:
            restore_rng(rngs[self.rt.rank])
        else:  # a new rank layout: fresh per-rank streams, still a function of (seed, rank, step)
            seed_everything(rank_seed(self.cfg.train.seed + state["step"], self.rt.rank))
        self.step = int(state["step"])
        self.first_loss = state.get("first_loss")
        if self.rt.is_root:
            log.info("resumed from %s (step %d, written by %d rank(s))", path, self.step, state["world_size"])
        return path

    def save_checkpoint(self, sync: bool = False) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes; all agree on the outcome."""
        self.watchdog.enter("checkpoint")
        tensors, state = self.state_dict()
        error = self.checkpointer.save(self.step, tensors, state, sync=sync)
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

    def train_step(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One optimizer step over ``train.grad_accum`` micro-batches; records how long each phase took in
        ``self.phase_s`` (the step-time breakdown: a few clock reads, cheap enough to leave on). On a GPU the
        phases are those of the host thread."""
        cfg = self.cfg.train
        t0 = time.perf_counter()
        schedule.apply_lr(self.optimizer, self.lr_at(self.step))
        self.optimizer.zero_grad()
        n = cfg.grad_accum
        # one micro-batch is the common case: no split, no extra ops (each costs a kernel launch on a GPU)
        micro = zip(inputs.chunk(n), target.chunk(n), strict=True) if n > 1 else ((inputs, target),)
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
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm))
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

    def loss(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch: the model's own, or mixed with a teacher's soft targets."""
        if self.teacher is None:
            return models.loss_fn(self.model(inputs), target)
        with torch.no_grad():
            soft = self.teacher(inputs)
        d = self.cfg.distill
        return distill.distillation_loss(self.model(inputs), soft, target, d.temperature, d.alpha)

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        peak = schedule.scaled_lr(o.lr, self.rt.size, o.lr_scaling)
        return schedule.lr_at(step, peak, self.cfg.train.steps, o.warmup_steps, o.decay, o.min_lr, o.power,
                              o.step_size, o.gamma)

    def train(self) -> dict[str, Any]:
        self.model.train()
        self.metrics.start(self.step)
        self.stop_flag.install()
        self.watchdog.start()
        return self._train_elastic() if self.cfg.fault.elastic else self._train_loop()

    def _train_loop(self, commit: Callable[[], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        while self.step < cfg.train.steps:
            self.watchdog.enter("data")
            t0 = time.perf_counter()
            inputs, target = self.data.next_batch()
            inputs, target = torch.from_numpy(inputs).to(self.rt.device), torch.from_numpy(target).to(self.rt.device)
            self.phase_s[0] = time.perf_counter() - t0
            self.watchdog.enter("forward/backward")
            loss = self.train_step(inputs, target)
            self.step += 1
            self.watchdog.beat(self.step, "collective")
            self.metrics.step_done(self.step, loss, self.optimizer.param_groups[0]["lr"], self.phase_s)
            if self.val is not None and cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 \
                    and self.step != cfg.train.steps:
                t0 = time.perf_counter()
                result = self.evaluate()
                self.metrics.record_eval(self.step, result, time.perf_counter() - t0)
            stop_signal, timed = self.agree_on_flags()
            stop = stop_signal > 0
            if stop or timed or self.checkpointer.due(self.step):
                self.save_checkpoint(sync=stop)
            if stop:
                if self.rt.is_root:
                    log.warning("stopping on request (%s on at least one rank) after step %d: checkpoint written, "
                                "exit code 75 asks for a requeue", signal.Signals(stop_signal).name, self.step)
                return {"preempted": True, "steps": self.step}
            if commit is not None and self.step % cfg.fault.commit_every == 0:
                commit()
        self._collect_flags()  # dist: no collective left in flight; a signal this late changes nothing
        if cfg.checkpoint.at_end:
            self.save_checkpoint(sync=True)
        return self.finish()

    def _train_elastic(self) -> dict[str, Any]:
        """Horovod elastic: state is committed in memory every ``fault.commit_every`` steps; when a worker is
        lost (or one is added), Horovod restores the last commit, re-forms the world, and the loop goes on."""
        state = hvd.elastic.TorchState(model=self.model, optimizer=self.optimizer, step=self.step,
                                       data=self.data.state_dict(), first_loss=self.metrics.first_loss)

        @hvd.elastic.run  # dist: re-runs the function after a reset, with state synced from rank 0
        def loop(state: Any) -> dict[str, Any]:
            self._join_world(state)

            def commit() -> None:
                state.step, state.data, state.first_loss = self.step, self.data.state_dict(), self.metrics.first_loss
                state.commit()

            return self._train_loop(commit)

        return loop(state)

    def _join_world(self, state: Any) -> None:
        """On entry and after every elastic reset: take this rank's place in the (maybe new) world and
        re-partition the rest of the epoch's data (and the validation set) among the ranks there are now."""
        cfg = self.cfg
        self._flags = None  # an all-reduce started in the old world never completes in the new one
        self.rt = runtime.refresh(self.rt)
        runtime.setup_logging(self.rt.rank, self.rt.size, cfg.run.log_all_ranks)
        self.step = state.step
        self.metrics.set_runtime(self.rt, self.step)
        self.checkpointer.is_root = self.rt.is_root
        self.metrics.first_loss = state.first_loss
        self.data.close()
        self.data = build_train_source(cfg, self.rt, self.train_path)
        self.data.load_state_dict(state.data)
        if self.val is not None:
            self.val.close()
            self.val = ValidationSet(cfg, self.rt, self.val_path)
        if self.world_sizes and self.world_sizes[-1] != self.rt.size:
            log.warning("elastic: world is now %d rank(s); continuing from step %d", self.rt.size, self.step)
        self.world_sizes.append(self.rt.size)

    def agree_on_flags(self) -> tuple[int, bool]:
        """Every ``fault.signal_check_every`` steps the ranks agree on the stop signal any rank got (0 for
        none) and whether a time-based checkpoint is due on any rank, with one tiny all-reduce. It is started
        at one check and read at the next, so it travels with the next step's gradients instead of costing a
        round trip of its own; every rank reads the same result at the same step: decided together."""
        if self.step % self.cfg.fault.signal_check_every:
            return 0, False
        if self.rt.size == 1:  # nothing to agree on; a collective would still cost a Horovod cycle
            return self.stop_flag.signum or 0, self.checkpointer.time_due()
        stop_signal, timed = self._collect_flags()
        if not (stop_signal or timed):  # else the caller stops or checkpoints now: flags start afresh next check
            flags = torch.tensor([self.stop_flag.signum or 0, self.checkpointer.time_due()], dtype=torch.int32)
            self._flags = hvd.allreduce_async(flags, op=hvd.Max, name="hpctrain.flags")  # dist
        return stop_signal, timed

    def _collect_flags(self) -> tuple[int, bool]:
        if self._flags is None:
            return 0, False
        flags, self._flags = hvd.synchronize(self._flags), None  # dist
        return int(flags[0]), bool(flags[1])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss (and accuracy for class targets) over the whole validation set, summed across ranks."""
        assert self.val is not None
        self.model.eval()
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, predictions, samples
        for x, y in self.val.batches():
            inputs, target = torch.from_numpy(x).to(self.rt.device), torch.from_numpy(y).to(self.rt.device)
            logits = self.model(inputs)
            totals[0] += float(models.loss_fn(logits, target)) * len(x)
            totals[3] += len(x)
            if not target.is_floating_point():
                totals[1] += float((logits.argmax(-1) == target).sum())
                totals[2] += target.numel()
        self.model.train()
        totals = hvd.allreduce(totals, op=hvd.Sum, name="hpctrain.eval")  # dist: every sample counted once
        result = {"val_loss": float(totals[0] / totals[3]), "val_samples": int(totals[3])}
        if totals[2] > 0:
            result["val_accuracy"] = float(totals[1] / totals[2])
        return result

    def finish(self) -> dict[str, Any]:
        """Summary on every rank (collective); rank 0 writes summary.json and the final weights."""
        digest = params_sha256(self.model)
        # dist: per-rank values that must agree (the parameters; fp16 skipped steps and loss scale; the clipped
        # norm): a difference means a broken broadcast, a lost update or ranks that took different decisions
        per_rank = hvd.allgather_object((digest, self.skipped_steps, self.grad_norm,
                                         self.scaler.get_scale() if self.scaler else None), name="hpctrain.final")
        digests = [r[0] for r in per_rank]
        if len(set(digests)) > 1 and self.rt.is_root:
            log.error("parameters differ between ranks at the end (ranks %s differ from rank 0)",
                      [r for r, d in enumerate(digests) if d != digest])
        extra = {
            "steps": self.step,
            "params_sha256": digest,
            "replicas_identical": len(set(digests)) == 1,
            "num_parameters": models.num_parameters(self.model),
            "model": self.cfg.model.name,
            "compression": self.cfg.comm.compression,
            "launcher": self.rt.launch.launcher,
            "controller": self.rt.controller,
            "device": str(self.rt.device),
            "threads_per_rank": self.rt.threads,
            "versions": {"hpctrain": hpctrain.__version__, "torch": torch.__version__,
                         "horovod": horovod.__version__},
        }
        if self.val is not None:
            extra.update(self.evaluate())
            self.metrics.record_eval(self.step, extra)
        extra["resumed_from"] = str(self.resumed_from) if self.resumed_from else None
        if self.cfg.fault.elastic:
            extra["elastic_world_sizes"] = self.world_sizes
        extra["precision"] = self.cfg.train.precision
        extra["skipped_steps_per_rank"] = [r[1] for r in per_rank]
        extra["grad_norm_per_rank"] = [r[2] for r in per_rank]
        extra["loss_scale_per_rank"] = [r[3] for r in per_rank]
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
        self.metrics.close()
        self.data.close()
        if self.val is not None:
            self.val.close()

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
            f"  loss {summary['initial_loss']:.4f} -> {summary['final_loss']:.4f}\n{val}"
            f"  throughput {rate:,.0f} samples/s global, {per_rank:,.0f} samples/s per rank, "
            f"step {summary['step_time_ms']['mean']:.1f} ms (after {summary['warmup_steps']} warm-up steps)\n"
            f"  step time ms: {phases}\n"
            f"  outputs in {run_dir}/: metrics.jsonl, summary.json, config.toml, model.pt, report.md, tensorboard/\n"
            f"  params_sha256 {summary['params_sha256']}")


def end_job() -> None:
    """From the watchdog thread: take every rank of the job down now (exit code 1)."""
    runtime.abort_world(1)
    os._exit(1)  # no MPI world (one process, or the Gloo controller: horovodrun then ends the others)


def select_resume(resume: str, root: Path, rt: Runtime) -> Path | None:
    """Rank 0 picks the checkpoint (newest that verifies, saying why newer ones were passed over) and
    broadcasts the choice; a collective (in elastic runs every rank picks, from the same files)."""
    choice: tuple[str | None, str | None] = (None, None)  # (path, error)
    if (rt.is_root or rt.elastic) and resume != "never":
        if resume == "auto":
            path, skipped = checkpoint.latest_good(root)
            for reason in skipped:
                log.warning("not resuming from %s", reason)
            choice = (str(path) if path else None, None)
        else:
            path, reason = checkpoint.resolve(Path(resume))
            choice = (str(path), None) if reason is None else (None, f"--resume {resume}: {reason}")
    # dist: elastic ranks each choose (the same files, the same choice) since a joining worker may not broadcast
    path, error = choice if rt.elastic else hvd.broadcast_object(choice, root_rank=0, name="hpctrain.resume")
    if error is not None:
        raise CheckpointError(error, agreed=True)
    return Path(path) if path else None


def load_teacher(path: str, rt: Runtime) -> torch.nn.Module:
    """The distillation teacher: a verified checkpoint, built from the model config saved in it (every rank
    reads the same files; a bad path fails on every rank alike)."""
    ckpt, reason = checkpoint.resolve(Path(path))
    if ckpt is None:
        raise CheckpointError(f"distill.teacher {path}: {reason}", agreed=True)
    tensors, state = checkpoint.load(ckpt)
    teacher = models.build(config_mod.from_dict(state["config"], str(ckpt)).model).to(rt.device)
    teacher.load_state_dict(tensors["model.pt"])
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def run(cfg: Config, rt: Runtime) -> dict[str, Any]:
    trainer = Trainer(cfg, rt)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if rt.is_root and not summary.get("preempted"):
        if cfg.run.report:
            from hpctrain.run_report import write_run_report

            write_run_report(trainer.run_dir)
        log.info("done\n%s", describe_summary(summary, trainer.run_dir))
    return summary
